"""What a run reports: its counters as it goes (creates paid, retries, 429s, polls, downloads, doubts, callbacks,
lost tasks), and at its end the Outcome — counts, spend, the first failures — with SPEC's exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .errors import BatchgenError, ExitCode
from .prices import Prices


@dataclass(slots=True)
class Counters:
    creates: int = 0  # paid
    retries: int = 0
    rate_limited: int = 0
    polls: int = 0
    downloads: int = 0
    in_doubt: int = 0
    callbacks: int = 0  # valid callbacks that woke a poller
    lost: int = 0  # tasks the service forgot (failed, kind `lost`)
    creates_by_model: Counter[str] = field(default_factory=Counter)  # paid, per model


@dataclass(slots=True)
class Outcome:
    exit_code: int
    counts: dict[str, int]
    counters: Counters
    seconds: float
    price: Decimal | None = None  # per image: --price, else the one the ledger recorded
    paid_total: int = 0  # paid creates the ledger counts over every item's life (spend so far = this × price)
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first failed items, for the end actions
    prices: Prices | None = None  # per model, when the ledger recorded prices per model
    spend: Decimal | None = None  # with per-model prices: this run's paid creates x their model's price ...
    spend_total: Decimal | None = None  # ... and the ledger's


def exit_code(counts: dict[str, int], fatal: BatchgenError | None = None, signum: int | None = None) -> int:
    """SPEC's exit code, most severe first: 3 (key/quota) or the fatal error's own, 128+N, 5, 1, 0."""
    if fatal is not None:
        return fatal.exit_code
    if signum is not None:
        return ExitCode.signal(signum)
    if counts["pending"] or counts["submitted"]:
        return ExitCode.INCOMPLETE
    return ExitCode.FAILED if counts["failed"] else ExitCode.OK
