"""The create window: at most N createTask calls in any window of S seconds, shared by every caller, adaptive to
the service's 429s. Held by the run's one throttle (limits.Throttle), apart from the in-flight limit and the
status budget (budget.py), because the service counts creates per window on their own.

Reads the time from an injected `clock`, like everything in limits.py: tested by advancing a clock by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


class RateWindow:
    """At most `count` calls in any `seconds`-long window, shared by every caller.

    A call counts from the moment its answer came back (`done`), not from when it was sent: the service saw it
    somewhere in between, so stamping it on return can never undercount the service's own window. A call the
    service dropped (429) is `forgotten`: it did not count there either.

    The count is adaptive too: a 429 (the service's window is smaller than we were told) cuts it to what the
    service accepted in the window the refused call met (or half, if none), at most once a window; each success
    gives back a little, up to the configured count. `start` (a remembered count) is where it begins.

    A slot is `[answer stamp, when the call left]` (math.inf while unknown). The stamps of one window more than
    the count needs are kept: a 429 is read against the window its call was sent into (`accepted(slot)`), not the
    one its answer came back in — by then the oldest creates of that window may have left ours.
    """

    def __init__(
        self,
        count: int,
        seconds: float,
        *,
        start: int | None = None,
        adaptive: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.maximum = count
        self.seconds = seconds
        self._clock = clock
        self._count = float(count if start is None else max(1, min(start, count)))
        self._adaptive = adaptive
        self._slots: list[list[float]] = []  # [stamp, sent]; stamp math.inf while the call is under way
        self.waiting = 0  # callers waiting for a place (the poll scheduler's sign that more creates will come)
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def count(self) -> int:
        return max(1, int(self._count))

    def wait_time(self) -> float | None:
        """0 when a call may start now; else how long until one may (None: until an answer comes back)."""
        now = self._clock()
        within = now - self.seconds
        self._slots = [slot for slot in self._slots if slot[0] > within - self.seconds]  # one window more
        live = [slot[0] for slot in self._slots if slot[0] > within]
        if len(live) < self.count:
            return 0.0
        wait = min(live) + self.seconds - now
        return None if math.isinf(wait) else wait

    def take(self) -> list[float]:
        """Take a place now (the caller checked `wait_time() == 0`); returns the slot for `done` or `forget`."""
        slot = [math.inf, math.inf]
        self._slots.append(slot)
        return slot

    async def acquire(self) -> list[float]:
        """Wait until a call may start; returns its slot, for `done` or `forget`."""
        self.waiting += 1
        try:
            async with self._lock:
                while (wait := self.wait_time()) != 0:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):  # asyncio.timeout: see polls.PollScheduler.run
                        async with asyncio.timeout(wait):
                            await self._changed.wait()
                return self.take()
        finally:
            self.waiting -= 1

    def leaving(self, slot: list[float]) -> None:
        """The slot's call leaves now (its request is sent)."""
        slot[1] = self._clock()

    def done(self, slot: list[float]) -> None:
        """The call's answer came back: it counts from now."""
        slot[0] = self._clock()
        self._changed.set()

    def forget(self, slot: list[float]) -> None:
        """The service dropped the call (429): it takes no place in the window."""
        slot[0] = -math.inf
        self._changed.set()

    def accepted(self, slot: list[float] | None = None) -> int:
        """Calls the service accepted in the last window — or, given a (refused) call's `slot`, in the window it
        met there: every create answered after the window before the call left, so far.

        The service's window when the call arrived held creates it accepted less than a window before; each was
        answered after that, so after the window before the call left. Counted from the 429's answer instead,
        the creates answered between that and the window before it had left ours, and the window learned one or
        two fewer than the service accepts (`rate_unknown`: 18 or 19 of 20, a whole window lost at the end).
        """
        now = self._clock()
        since = now if slot is None or math.isinf(slot[1]) else min(now, slot[1])
        return sum(1 for s in self._slots if since - self.seconds < s[0] <= now)

    def learn(self, accepted: int) -> None:
        """The service accepts no more than `accepted` creates a window (none known: half)."""
        if self._adaptive:
            self._count = max(1.0, min(self._count, float(accepted)) if accepted else self._count / 2)

    def on_success(self) -> None:
        if self._adaptive and self._count < self.maximum:
            self._count = min(float(self.maximum), self._count + 1 / max(1.0, self._count))
