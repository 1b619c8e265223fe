"""Shared limits: the in-flight AIMD limiter, the create-rate window, the status-query budget, the cool-down.

Pure asyncio and arithmetic; nothing here knows HTTP. Backpressure is structural: a caller takes a slot (or a
token) and only then starts the work, so only the allowed amount of work ever exists. A 429 slows the one
shared limiter for everyone instead of each task sleeping on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque


class InFlightLimiter:
    """Tasks submitted and not finished, at most `limit`; the limit moves AIMD-style in [1, maximum].

    `on_saturated(live)` cuts the limit to the number of tasks the service is running for us when it said 429
    (that is what it can take), or halves it when that is unknown. `on_success` raises it, never above
    `maximum`: by 1/limit (one slot per `limit` successes, a gentle probe) while 429s are recent, by a whole
    slot once `calm` seconds passed without one (the cut was the rate window's doing, not a lack of room).
    """

    def __init__(self, maximum: int, *, calm: float = 1.0) -> None:
        self.maximum = maximum
        self.calm = calm
        self._last_cut = -math.inf
        self._limit = float(maximum)
        self.in_flight = 0
        self.peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    async def acquire(self) -> None:
        """Wait for a free slot, then take it."""
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # we were handed a turn we will not use: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def on_saturated(self, live: int | None = None) -> None:
        cut = self._limit / 2 if live is None else min(self._limit, float(live))
        self._limit = max(1.0, cut)
        self._last_cut = time.monotonic()

    def on_success(self) -> None:
        if self._limit < self.maximum:
            step = 1.0 if time.monotonic() - self._last_cut > self.calm else 1 / self._limit
            self._limit = min(float(self.maximum), self._limit + step)
            self._wake()

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class RateWindow:
    """At most `count` calls in any `seconds`-long window, shared by every caller.

    A call counts from the moment its answer came back (`done`), not from when it was sent: the service saw it
    somewhere in between, so stamping it on return can never undercount the service's own window. A call the
    service dropped (429) is `forgotten`: it did not count there either.

    The count is adaptive too: a 429 (the service's window is smaller than we were told) cuts it in half, at
    most once a window; each success gives back a little, up to the configured count.
    """

    def __init__(self, count: int, seconds: float, *, adaptive: bool = True) -> None:
        self.maximum = count
        self.seconds = seconds
        self._count = float(count)
        self._adaptive = adaptive
        self._slots: list[list[float]] = []  # [stamp]; math.inf while the call is under way
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def count(self) -> int:
        return max(1, int(self._count))

    async def acquire(self) -> list[float]:
        """Wait until a call may start; returns its slot, for `done` or `forget`."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._slots = [slot for slot in self._slots if slot[0] + self.seconds > now]
                if len(self._slots) < self.count:
                    slot = [math.inf]
                    self._slots.append(slot)
                    return slot
                wait = min(slot[0] for slot in self._slots) + self.seconds - now
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), None if math.isinf(wait) else wait)

    def done(self, slot: list[float]) -> None:
        """The call's answer came back: it counts from now."""
        slot[0] = time.monotonic()
        self._changed.set()

    def forget(self, slot: list[float]) -> None:
        """The service dropped the call (429): it takes no place in the window."""
        slot[0] = -math.inf
        self._changed.set()

    def on_saturated(self) -> None:
        """A 429: the service accepts no more than it accepted in the last window (or half, if none)."""
        if not self._adaptive:
            return
        now = time.monotonic()
        accepted = sum(1 for slot in self._slots if now - self.seconds < slot[0] <= now)
        self._count = max(1.0, min(self._count, float(accepted)) if accepted else self._count / 2)

    def on_success(self) -> None:
        if self._adaptive and self._count < self.maximum:
            self._count = min(float(self.maximum), self._count + 1 / max(1.0, self._count))


class TokenBucket:
    """`rate` tokens per second with a burst of `burst`; `acquire` waits for one.

    Adaptive like the others: a 429 halves the rate (at most once a second), each success gives back a
    tenth of a token per second, up to the configured rate.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.maximum = rate
        self.rate = rate
        self._last_cut = -math.inf
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def on_saturated(self) -> None:
        now = time.monotonic()
        if now - self._last_cut >= 1.0:
            self._last_cut = now
            self.rate = max(0.1, self.rate / 2)
            self.burst = min(self.burst, max(1.0, self.rate))

    def on_success(self) -> None:
        if self.rate < self.maximum:
            self.rate = min(self.maximum, self.rate + 0.1)


class Cooldown:
    """One shared pause after 429s: exponential with jitter, or the server's Retry-After when it sends one."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.strikes = 0
        self._until = 0.0
        self._rng = rng or random.Random()

    def trigger(self, retry_after: float | None = None) -> float:
        """Start (or extend) the pause; returns its length in seconds.

        A burst of 429s answering calls sent together is one strike: while a pause is on, another 429 does not
        lengthen it (unless the server asks for longer with Retry-After).
        """
        if retry_after is None and self.remaining > 0:
            return self.remaining
        self.strikes += 1
        if retry_after is not None and retry_after >= 0:
            delay = min(retry_after, 3600.0)
        else:
            base = min(self.maximum, self.initial * 2 ** (self.strikes - 1))
            delay = base / 2 + self._rng.random() * base / 2  # "equal jitter": never less than half
        self._until = max(self._until, time.monotonic() + delay)
        return delay

    def clear(self) -> None:
        self.strikes = 0

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    async def wait(self) -> None:
        while (left := self.remaining) > 0:  # noqa: ASYNC110 - another 429 may move the end while we sleep
            await asyncio.sleep(left)
