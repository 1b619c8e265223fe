"""The service's answers as data, without any I/O: recordInfo's record (its JSON strings parsed, every text
masked), Retry-After, what kind of body came back (JSON, an HTML page, nothing), and one line for a certificate
that does not verify. client.py, the one aiohttp client, reads every answer through these.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .config import redact, unmistakable

COST_FIELDS = ("consumeCredits", "remainedCredits", "costTime")  # recordInfo's billing fields, when present


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What recordInfo says of one task, with its JSON strings already parsed."""

    task_id: str
    state: str  # waiting | queuing | generating | success | fail (or what the service invents next)
    result_urls: tuple[str, ...]
    fail_code: str | None
    fail_message: str | None
    result_error: str | None = None  # set when a success carried no readable resultJson
    created: float | None = None  # createTime, Unix seconds (the poll scheduler learns latencies from these)
    completed: float | None = None  # completeTime, Unix seconds
    key_in_url: bool = False  # a result URL carried the API key (the URLs here are masked): never fetch them
    cost: tuple[tuple[str, float], ...] = ()  # the service's billing fields (COST_FIELDS) that it sent, numeric

    @property
    def finished(self) -> bool:
        return self.state in ("success", "fail")

    @property
    def unknown(self) -> bool:
        """The service does not know the task (recordInfo is null, or 404): not visible yet, or forgotten."""
        return self.state == UNKNOWN


UNKNOWN = "unknown"  # our own state for a task the service answers null or 404 for


def certificate_problem(host: str, error: BaseException) -> str:
    """One line for a certificate that does not verify: which host, what is wrong, what to do."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
    code = getattr(error, "verify_code", None)
    if code == 10 or "expired" in str(reason):  # X509_V_ERR_CERT_HAS_EXPIRED
        fix = "the certificate has expired: it must be renewed on the server (or check this machine's clock)"
    elif code == 62 or "mismatch" in str(reason) or "match" in str(reason):  # X509_V_ERR_HOSTNAME_MISMATCH
        fix = "the certificate is for another host name: check the URL (--api-base), or the server's certificate"
    else:
        fix = "not trusted: use --ca-bundle PATH or SSL_CERT_FILE with the CA that issued it"
    return f"the certificate of {host} does not verify ({reason}); {fix}"


def host_of(url: str) -> str:
    """host:port of a URL, as a line names it."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def is_json(text: str) -> bool:
    """Whether an answer is a JSON object: the API itself (or its gateway) answered, not a proxy's page."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):  # RecursionError: a body nested thousands deep (a hostile answer)
        return False


def page_kind(headers: Mapping[str, str], text: str) -> str:
    """ " with an HTML page" / " with an empty body" / "": what came with an answer that is not the API's."""
    if not text.strip():
        return " with an empty body"
    return " with an HTML page" if is_html(headers, text) else ""


def unknown_record(task_id: str) -> TaskRecord:
    return TaskRecord(task_id=task_id, state=UNKNOWN, result_urls=(), fail_code=None, fail_message=None)


# Real ids are ~35 characters (`task_imagen4-ultra_1777600000000`); one that will not fit a recordInfo URL (servers
# refuse request lines of 8 KiB and more) could be asked about never, so it is refused when the create answers it.
MAX_TASK_ID = 1024


def task_id_in(text: str) -> str | None:
    """The taskId an answer carries (`data.taskId`, whatever the status and code), or None."""
    try:
        body = json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):
        return None
    data = body.get("data") if isinstance(body, dict) else None
    task_id = data.get("taskId") if isinstance(data, dict) else None
    return task_id.strip() if isinstance(task_id, str) and task_id.strip() else None


def is_html(headers: Mapping[str, str], text: str) -> bool:
    """An HTML page where the API should answer JSON: the base URL points somewhere else."""
    kind = headers.get("Content-Type", "").lower()
    return "text/html" in kind or text.lstrip()[:15].lower().startswith(("<!doctype html", "<html"))


def parse_record(task_id: str, data: Mapping[str, Any], *, secret: str | Sequence[str] | None = None) -> TaskRecord:
    """recordInfo's `data`: `resultJson` is a JSON string (or an object); empty strings mean none.

    Every text is masked for `secret`; a result URL that carried it sets `key_in_url`.
    """
    state = str(data.get("state") or "").strip().lower() or "waiting"
    urls: tuple[str, ...] = ()
    problem = None
    raw = data.get("resultJson")
    if state == "success":
        parsed: Any = raw
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw) if raw.strip() else None
            except (ValueError, RecursionError):
                parsed, problem = None, "resultJson is not valid JSON"
        found = parsed.get("resultUrls") if isinstance(parsed, dict) else None
        if isinstance(found, list):
            urls = tuple(u for u in found if isinstance(u, str) and u)
        if not urls and problem is None:
            problem = "the task succeeded but its resultJson has no resultUrls"
    masked = tuple(redact(u, unmistakable(secret)) for u in urls)  # masked, a URL is another: never by chance
    return TaskRecord(
        task_id=str(data.get("taskId") or task_id),
        state=state,
        result_urls=masked,
        fail_code=_masked(data.get("failCode"), secret),
        fail_message=_masked(data.get("failMsg"), secret),
        result_error=problem,
        created=_seconds(data.get("createTime")),
        completed=_seconds(data.get("completeTime")),
        key_in_url=masked != urls,
        cost=tuple((name, value) for name in COST_FIELDS if (value := _number(data.get(name))) is not None),
    )


def _number(value: Any) -> float | None:
    """A finite number (or digits in a string); None otherwise: a billing field we cannot read is left out."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _seconds(millis: Any) -> float | None:
    """A Unix-milliseconds time (an int, or digits in a string) in seconds; None when missing or not a time."""
    try:
        value = float(millis)
    except (TypeError, ValueError):
        return None
    return value / 1000 if 0 < value < 1e14 else None  # NaN, infinities and nonsense are no time


def _masked(value: Any, secret: str | Sequence[str] | None) -> str | None:
    text = text_of(value)
    return None if text is None else redact(text, secret)


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
