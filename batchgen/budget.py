"""The status-query budget: every recordInfo of a run is spent here (the poll scheduler grants them), apart from
the create window and the in-flight limit (limits.py), because the service counts status queries on their own.

Reads the time from an injected `clock`, like everything in limits.py: tested by advancing a clock by hand.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class StatusBudget:
    """Status queries: at most `rate` in any 1-second window — and one more at most in any `1 + JITTER` seconds.

    The second window is for the network: the service counts queries when they arrive, and a full second's
    worth sent at once, then another a second later, can land inside one of its windows after a little jitter
    (a warm start that sent 8 at once every second met four 429s from a service allowing 10/s). So a burst is
    fine — the quick start's last queries go out together — but a second one waits `1 + JITTER` s, and the
    service sees at most `rate + 1` in any of its seconds while the jitter stays under JITTER.
    Below one query per second, queries are simply 1/rate seconds apart. Adaptive like the others: a 429 on a
    status query halves the rate (at most once a second), each answered query gives back a tenth of a query
    per second, up to the configured rate.
    """

    JITTER = 0.25  # seconds of arrival jitter the budget leaves room for

    def __init__(self, rate: float, *, clock: Clock = time.monotonic) -> None:
        self.maximum = rate
        self.rate = rate
        self._clock = clock
        self._last_cut = -math.inf
        self._stamps: deque[float] = deque()  # the queries of the last 1 + JITTER seconds
        self._last = -math.inf

    def next_free(self, now: float | None = None) -> float:
        """The clock time from which one more query fits in the budget (`now`, or later)."""
        now = self._clock() if now is None else now
        while self._stamps and self._stamps[0] <= now - 1.0 - self.JITTER:
            self._stamps.popleft()
        if self.rate < 1:
            return max(now, self._last + 1 / self.rate)
        count = int(self.rate)
        free = now
        if len(self._stamps) >= count:
            free = max(free, self._stamps[-count] + 1.0)
        if len(self._stamps) >= count + 1:
            free = max(free, self._stamps[-count - 1] + 1.0 + self.JITTER)
        return free

    def take(self) -> bool:
        """Spend one query now, if the budget has room; whether it had."""
        now = self._clock()
        if self.next_free(now) > now:
            return False
        self._stamps.append(now)
        self._last = now
        return True

    def on_saturated(self) -> None:
        now = self._clock()
        if now - self._last_cut >= 1.0:
            self._last_cut = now
            self.rate = max(0.1, self.rate / 2)

    def on_success(self) -> None:
        if self.rate < self.maximum:
            self.rate = min(self.maximum, self.rate + 0.1)
