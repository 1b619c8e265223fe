"""The run's one throttle: in-flight AIMD limiter, create-rate window, status-query budget, shared cool-down, and
the 429 bookkeeping that ties them together.

Pure asyncio and arithmetic; nothing here knows HTTP. Backpressure is structural: a caller takes a slot (or a
token) and only then starts the work, so only the allowed amount of work ever exists. A 429 slows the one
shared throttle for everyone instead of each task sleeping on its own.

Every part reads the time from an injected `clock` (a function returning "now" in seconds, `time.monotonic` by
default), so that the arithmetic is tested by advancing a clock by hand, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import RetryPolicy

Clock = Callable[[], float]


class InFlightLimiter:
    """Tasks submitted and not finished, at most `limit`; the limit moves AIMD-style in [1, maximum].

    `on_saturated(live)` cuts the limit to the number of tasks the service is running for us when it said 429
    (that is what it can take), or halves it when that is unknown. `on_success` raises it, never above
    `maximum`: by 1/limit (one slot per `limit` successes, a gentle probe) while 429s are recent, by a whole
    slot once `calm` seconds passed without one (the cut was the rate window's doing, not a lack of room).
    `start` (a remembered level, below `maximum`) is where the limit begins.
    """

    def __init__(self, maximum: int, *, start: int | None = None, calm: float = 1.0, clock: Clock = time.monotonic):
        self.maximum = maximum
        self.calm = calm
        self._clock = clock
        self._last_cut = -math.inf
        self._limit = float(maximum if start is None else max(1, min(start, maximum)))
        self.in_flight = 0
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

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def on_saturated(self, live: int | None = None) -> None:
        cut = self._limit / 2 if live is None else min(self._limit, float(live))
        self._limit = max(1.0, cut)
        self._last_cut = self._clock()

    def on_success(self) -> None:
        if self._limit < self.maximum:
            step = 1.0 if self._clock() - self._last_cut > self.calm else 1 / self._limit
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

    The count is adaptive too: a 429 (the service's window is smaller than we were told) cuts it to what the
    service accepted in the last window (or half, if none), at most once a window; each success gives back a
    little, up to the configured count. `start` (a remembered count) is where it begins.
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
        self._slots: list[list[float]] = []  # [stamp]; math.inf while the call is under way
        self.waiting = 0  # callers waiting for a place (the poll scheduler's sign that more creates will come)
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def count(self) -> int:
        return max(1, int(self._count))

    def wait_time(self) -> float | None:
        """0 when a call may start now; else how long until one may (None: until an answer comes back)."""
        now = self._clock()
        self._slots = [slot for slot in self._slots if slot[0] + self.seconds > now]
        if len(self._slots) < self.count:
            return 0.0
        wait = min(slot[0] for slot in self._slots) + self.seconds - now
        return None if math.isinf(wait) else wait

    def take(self) -> list[float]:
        """Take a place now (the caller checked `wait_time() == 0`); returns the slot for `done` or `forget`."""
        slot = [math.inf]
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

    def done(self, slot: list[float]) -> None:
        """The call's answer came back: it counts from now."""
        slot[0] = self._clock()
        self._changed.set()

    def forget(self, slot: list[float]) -> None:
        """The service dropped the call (429): it takes no place in the window."""
        slot[0] = -math.inf
        self._changed.set()

    def on_saturated(self) -> None:
        """A 429: the service accepts no more than it accepted in the last window (or half, if none)."""
        if not self._adaptive:
            return
        now = self._clock()
        accepted = sum(1 for slot in self._slots if now - self.seconds < slot[0] <= now)
        self._count = max(1.0, min(self._count, float(accepted)) if accepted else self._count / 2)

    def on_success(self) -> None:
        if self._adaptive and self._count < self.maximum:
            self._count = min(float(self.maximum), self._count + 1 / max(1.0, self._count))


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


class Cooldown:
    """One shared pause after 429s: the retry policy's backoff, or the server's Retry-After when it sends one."""

    def __init__(self, policy: RetryPolicy, *, rng: random.Random | None = None, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._until = -math.inf
        self._rng = rng or random.Random()
        self._clock = clock

    def trigger(self, pause: int, retry_after: float | None = None) -> float:
        """Start (or extend) the `pause`-th pause in a row (1-based); returns its length in seconds.

        While a pause is on, another 429 does not lengthen it (unless the server asks for longer with
        Retry-After): the calls that meet it were sent before it began.
        """
        if retry_after is None and self.remaining > 0:
            return self.remaining
        if retry_after is not None and retry_after >= 0:
            delay = min(retry_after, 3600.0)
        else:
            delay = self.policy.delay(pause, self._rng.random())  # the one backoff formula
        self._until = max(self._until, self._clock() + delay)
        return delay

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self) -> None:
        while (left := self.remaining) > 0:  # noqa: ASYNC110 - another 429 may move the end while we sleep
            await asyncio.sleep(left)


@dataclass(frozen=True, slots=True)
class Hints:
    """What an earlier run learned about the service: where the limits start (the flags still cap them)."""

    create_count: int | None = None  # creates per window the service accepted
    in_flight: int | None = None  # tasks in flight when it first said 429


class Throttle:
    """The one throttle of a run: every limit, and what a 429 does to them.

    A 429 on createTask slows everyone down at once, one signal per burst however many calls of the burst see
    it: each call remembers the `epoch` it was sent in, and a 429 for a call sent before the last slow-down has
    been answered already. First the limits learn what the service took (the in-flight limit drops to the tasks
    it is running for us, the create window to what it accepted in its last window). Only when 429s go on after
    that, with no success in between (a second `strike`), does everyone also pause for the cool-down (or the
    server's Retry-After, always honoured). A 429 on a status query halves the status budget only: status
    queries have their own budget at the service.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        create_rate: tuple[int, float],
        poll_rate: float,
        retry: RetryPolicy,
        hints: Hints | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        hints = hints or Hints()
        self.clock = clock
        self.limiter = InFlightLimiter(concurrency, start=hints.in_flight, clock=clock)
        self.window = RateWindow(*create_rate, start=hints.create_count, clock=clock)
        self.status = StatusBudget(poll_rate, clock=clock)
        self.cooldown = Cooldown(retry, rng=rng, clock=clock)
        self.live = 0  # tasks created at the service and not yet seen finished
        self.most_live = 0
        self.epoch = 0  # bumped each time a 429 slows us down; a call remembers the epoch it was sent in
        self.strikes = 0  # 429 signals since the last success (the second and later ones also pause everyone)
        self.first_429_live: int | None = None  # tasks live when the service first said 429 in this run
        self.learned_count: int | None = None  # the create window's count after the last 429 cut it

    def task_started(self) -> None:
        self.live += 1
        self.most_live = max(self.most_live, self.live)

    def task_ended(self) -> None:
        self.live -= 1

    def on_create_saturated(self, epoch: int, retry_after: float | None = None) -> float | None:
        """A createTask 429 for a call sent in `epoch`; the pause everyone takes now (0 for none), or None when
        this 429 belongs to a burst that was answered already."""
        if epoch < self.epoch and retry_after is None:
            return None
        self.epoch += 1
        self.strikes += 1
        if self.first_429_live is None:
            self.first_429_live = self.live
        self.limiter.on_saturated(self.live)
        self.window.on_saturated()
        self.learned_count = self.window.count
        if self.strikes > 1 or retry_after is not None:
            return self.cooldown.trigger(max(1, self.strikes - 1), retry_after)
        return 0.0

    def on_create_success(self) -> None:
        self.strikes = 0
        self.window.on_success()
        self.limiter.on_success()

    def on_status_saturated(self) -> None:
        self.status.on_saturated()

    def on_status_success(self) -> None:
        self.status.on_success()
