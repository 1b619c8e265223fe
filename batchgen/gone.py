"""A model the service no longer offers: recognising its answer, and keeping its other items from being sent.

The Market answers for a model it does not offer (any more) with HTTP 400 "unsupported model", a
`model_price_error` ("price not configured"), or — new-api's distributor — HTTP 503 "no channel available for
model X". When the message names the model, that is about the model, not the run: the create made nothing (it is
neither paid nor in doubt), the model's other items are not sent and fail with kind `model_unavailable`, and
other models go on. The next run probes each such model with one item (a price missing yesterday may be set
today): if that one is created, the model's items go as usual; if not, they fail again, unsent.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from typing import Any

from .escapes import flat
from .failures import Kind
from .ledger import ErrorRecord, Record, error_record
from .models import Registry

KIND: Kind = "model_unavailable"
_GONE = ("unsupported model", "model_price_error", "price not configured", "倍率或价格未配置")
_NO_CHANNEL = ("no channel available", "no available channel", "无可用渠道")


def classify(status: int, text: str, model: str) -> str | None:
    """The service's message when an answer says `model` is not offered (and names it), else None."""
    if not model or (status < 400 and status != 200):
        return None
    message, code = _message(text)
    lowered = f"{message} {code}".lower()
    if not _names(message, model):
        return None
    if status == 503 and any(phrase in lowered for phrase in _NO_CHANNEL):
        return message
    body_status = int(code) if code.isdigit() else status
    if status in (400, 200) and body_status in (400, 500) and any(phrase in lowered for phrase in _GONE):
        return message
    if status in (400, 500) and code == "model_price_error":
        return message
    return None


def _names(message: str, model: str) -> bool:
    """Whether the message names `model` itself: `nano-banana-pro` is not named by a message about
    `nano-banana-pro-flash` (a model name is letters, digits and `.`, `_`, `-`)."""
    return re.search(rf"(?<![A-Za-z0-9._-]){re.escape(model)}(?![A-Za-z0-9_-]|\.[A-Za-z0-9])", message) is not None


def _message(text: str) -> tuple[str, str]:
    """(message, code) of an answer in any of the service's envelopes (task relay, business, gateway)."""
    try:
        body: Any = json.loads(text)
    except (ValueError, RecursionError):
        return flat(text[:500]), ""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    if isinstance(error, dict):
        body = error
    message = body.get("msg") or body.get("message") or ""
    code = body.get("code")
    return (flat(str(message)[:500]), "" if code is None else flat(str(code)[:100]))


def suspects(records: Iterable[Record]) -> set[str]:
    """Models whose items an earlier run failed as unavailable: this run probes each with one item first."""
    found: set[str] = set()
    for record in records:
        error, request = record["error"], record["request"]
        failed = record["state"] == "failed" and error is not None and error["kind"] == KIND
        if failed and request is not None and isinstance(model := request.get("model"), str):
            found.add(model)  # a request read from disk may name no model
    return found


class Gate:
    """Which items of which models may be sent now. One per run, inside the submitter."""

    def __init__(self, suspect: set[str], cards: Registry) -> None:
        self.cards = cards
        self.gone: dict[str, str] = {}  # model -> the service's message
        self._suspect = set(suspect)  # gone in an earlier run: one item is sent first (the probe)
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._probing: set[int] = set()  # id() of the items that are probes now

    async def admit(self, model: str, token: int) -> bool:
        """Whether to send an item of `model` (`token`: the item's id(), to settle its probe later). An item of a
        suspect model is its probe, or waits for the probe to settle."""
        if model in self._suspect and model not in self.gone:
            probe = self._probes.get(model)
            if probe is None:
                self._probes[model] = asyncio.get_running_loop().create_future()
                self._probing.add(token)
                return True
            await asyncio.shield(probe)
        return model not in self.gone

    def settle(self, model: str, token: int) -> None:
        """An item's create is over: if it was its model's probe, the model's other items may go on (or fail)."""
        if token in self._probing:
            self._probing.discard(token)
            self._suspect.discard(model)
            probe = self._probes.pop(model)
            if not probe.done():
                probe.set_result(None)

    def went(self, model: str, message: str) -> str | None:
        """The model's first such answer: the one line to print, naming its successor (None after the first)."""
        if model in self.gone:
            return None
        self.gone[model] = message
        card = self.cards.get(model)
        successor = card.successor if card is not None else None
        then = (
            f"; its card names {successor!r} as its successor (try `batchgen validate MANIFEST --model {successor}`)"
            if successor
            else ""
        )
        return (
            f"model {model!r} is not offered by the service ({message}); its items are not sent and fail "
            f"({KIND}); the next run tries one of them first{then}"
        )

    def error(self, model: str) -> ErrorRecord:
        return error_record(KIND, None, f"model {model!r} is not offered by the service: {self.gone.get(model, '')}")
