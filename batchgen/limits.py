"""The run's one throttle: in-flight AIMD limiter, shared cool-down, the create window (window.py's) and the
status-query budget (budget.py's), held here, and the 429 bookkeeping that ties them together.

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
from typing import Literal

from .budget import StatusBudget
from .config import RetryPolicy
from .window import RateWindow

Clock = Callable[[], float]
__all__ = ["Clock", "Cooldown", "Hints", "InFlightLimiter", "RateWindow", "StatusBudget", "Throttle"]


class InFlightLimiter:
    """The run's one count of tasks in flight, and the most there may be: `limit`, AIMD-style in [1, maximum].

    A slot is taken (`acquire`) before an item's work is created and given back (`release`) when its task is seen
    finished; of the slots held, `running` are tasks the service runs for us (`started`/`ended`), the others wait
    for the create window or are being created — one set of tasks, so a cut to `running` is one the limiter holds.
    `on_saturated(running)` cuts the limit to what the service ran for us when it said it is full (or halves it).
    `on_success` raises it, never above `maximum`: a whole slot per success with no confirmed "full" level (`cap`)
    or, calm (no cut for `calm` s), below it; else 1/limit — one slot per `limit` successes, so a probe above a
    known cap goes no faster than the service frees slots; not at all for a success that is no sign of room above
    the limit (`beyond`: the throttle's reading). `start`: a remembered level (re-probed, no ceiling).
    """

    def __init__(
        self,
        maximum: int,
        *,
        start: int | None = None,
        cap: int | None = None,
        calm: float = 1.0,
        clock: Clock = time.monotonic,
    ):
        self.maximum = maximum
        self.calm = calm
        self._clock = clock
        self._last_cut = -math.inf
        self._limit = float(maximum if start is None else max(1, min(start, maximum)))
        self._probe: asyncio.TimerHandle | None = None
        self.cap: float | None = None if cap is None else float(max(1, min(cap, maximum)))
        self.in_flight = 0  # slots held
        self.running = 0  # of those, tasks the service runs for us
        self.most_running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

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

    async def requeue(self) -> None:
        """Give the slot back and wait for one again (the service is full); cancelled, it still counts as held."""
        self.release()
        try:
            await self.acquire()
        except asyncio.CancelledError:
            self.in_flight += 1
            raise

    def started(self) -> None:
        """A slot's task is running at the service (created, or resumed from an earlier run)."""
        self.running += 1
        self.most_running = max(self.most_running, self.running)

    def ended(self) -> None:
        """A slot's task left the service's count: seen finished, timed out or abandoned."""
        self.running -= 1

    def on_saturated(self, running: int | None = None) -> None:
        self._limit = max(1.0, self._limit / 2 if running is None else min(self._limit, float(running)))
        self._last_cut = self._clock()
        if self.cap is None:  # an unconfirmed "full" (a rate limit's looks the same): one slot more once calm
            with contextlib.suppress(RuntimeError):  # no loop (the pure bookkeeping in tests): no probe
                if self._probe is not None:
                    self._probe.cancel()
                self._probe = asyncio.get_running_loop().call_later(self.calm, self._probe_once)

    def _probe_once(self) -> None:
        """Calm since the cut and still no slot free: try one more create without waiting for a finish."""
        self._probe = None
        if self.cap is None and self._waiters and self.in_flight >= self.limit and self._limit < self.maximum:
            self._limit += 1.0
            self._wake()

    def restore(self, limit: float) -> None:
        """A cut that later evidence showed was the window's doing, not the service's "full": undone."""
        self._limit = min(float(self.maximum), max(self._limit, limit))
        self._wake()

    def on_success(self, beyond: bool = True) -> None:
        """A create the service took; not `beyond`, it shows no room above the limit, which stays."""
        if beyond and self._limit < self.maximum:
            calm = self._clock() - self._last_cut > self.calm
            step = 1.0 if self.cap is None or (calm and self._limit < self.cap) else 1 / self._limit
            self._limit = min(float(self.maximum), self._limit + step)
            self._wake()

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


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

    create_count: int | None = None  # creates per window the service accepted when it said 429 for the rate
    in_flight: int | None = None  # tasks it ran for us when it said 429 for being full: re-probed, not a ceiling


Saturation = Literal["capacity", "rate", "both"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a createTask 429 was taken for, and what it was read from."""

    kind: Saturation
    accepted: int  # creates the service accepted in the last window
    running: int  # tasks it was running for us
    pause: float  # the pause everyone takes now (0: none)


class Throttle:
    """The one throttle of a run: every limit, the one count of tasks in flight (the limiter's), and what a 429
    does to them.

    A createTask 429 means "saturated": either the create window is full (rate) or the service runs all it will
    take for us (capacity) — or both. `classify` tells them apart from two levels this run has seen: the creates
    accepted per window at a rate 429 (else the most accepted in a window so far), and the tasks running at a
    capacity 429 (else the most running so far). A 429 with the window at its level and few tasks running is
    rate; with the window under its level and the tasks running at theirs, capacity; at both levels, both. The
    first 429 of a run, at both levels (nothing tells them apart yet), is decided from the window: not full, it
    is capacity.

    Capacity lowers the in-flight limit to the tasks running (the refused item waits for a task to be seen
    finished), keeps the window, pauses nobody. Rate cuts the window to what the service accepted in its last
    window; rate 429s with no success between (a second `strike`) pause everyone; Retry-After is always honoured.
    One signal per burst: a 429 for a call sent before the last slow-down (its `epoch`) was answered already.
    A 429 on a status query halves the status budget only: status queries have their own budget at the service.
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
        self.limiter = InFlightLimiter(concurrency, start=hints.in_flight, cap=hints.in_flight, clock=clock)
        self.window = RateWindow(*create_rate, start=hints.create_count, clock=clock)
        self.status = StatusBudget(poll_rate, clock=clock)
        self.cooldown = Cooldown(retry, rng=rng, clock=clock)
        self.epoch = 0  # bumped each time a 429 slows us down; a call remembers the epoch it was sent in
        self.strikes = 0  # rate 429 signals since the last success (the second and later ones pause everyone)
        self.rate_level: int | None = None  # creates accepted in the window at this run's last rate 429
        self.cap_level: int | None = None  # tasks running at this run's last capacity 429
        self.learned_count: int | None = None  # the create window's count after the last rate 429 cut it
        self._cap_accepted = 0  # creates accepted in the window at the 429 that set `cap_level`
        self._cap_high = 0  # the most tasks running at the 429s of that 429's burst (sent before it: `_cap_epoch`)
        self._cap_epoch = -1
        self._limit_before_cap: float | None = None  # the in-flight limit before an unconfirmed "full" cut it
        # The tasks the service surely still runs (younger than its fastest finish; the poll scheduler's count), or
        # None: the limiter's count also holds tasks finished there and not yet seen here.
        self.young: Callable[[], int | None] = lambda: None
        self.verdicts: dict[str, int] = {"capacity": 0, "rate": 0, "both": 0}
        self.corrected: str | None = None  # the last "full" reading found wrong, until -v said it
        self.last_kind: Saturation | None = None

    def classify(self, accepted: int, running: int) -> Saturation:
        """What a 429 is, from the creates accepted in the last window and the tasks running for us."""
        rate_at = self.rate_level if self.rate_level is not None else self.window.count
        rate_full = accepted >= rate_at - _slack(rate_at)  # our stamps come late: a little slack
        if self.cap_level is None:
            # The first 429 is decided from the window (not full: capacity); later, what it does not explain too.
            return "rate" if rate_full else "capacity"
        crowded = running >= self.cap_level - _lag(self.cap_level)
        if rate_full:
            return "both" if crowded else "rate"
        # Under the window's level: full, when as many run as at its last "full"; with fewer, its window is smaller.
        return "capacity" if crowded else "rate"

    def on_create_saturated(
        self, epoch: int, retry_after: float | None = None, slot: list[float] | None = None
    ) -> Verdict | None:
        """A createTask 429 for a call sent in `epoch` (its create-window `slot`, when known): what it was taken for
        and the pause everyone takes now, or None when this 429 belongs to a burst that was answered already."""
        if epoch < self.epoch and retry_after is None:
            if self.epoch == self._cap_epoch:  # the burst of the 429 that set the "full" level: its accepts
                self._cap_high = max(self._cap_high, self.limiter.running)  # may be handled after that 429
            return None
        accepted, running = self.window.accepted(slot), self.limiter.running
        kind = self.classify(accepted, running)
        self.verdicts[kind] += 1
        self.last_kind = kind
        self.epoch += 1
        pause = 0.0
        if kind != "rate":
            # A second "full" at the same level confirms it: from then on the probe above it is one slot per
            # `limit` successes. A first one may be a rate limit's doing (it looks the same): probed sooner.
            again = self.cap_level is not None and running <= self.cap_level + _lag(self.cap_level)
            if self.cap_level is None:
                self._limit_before_cap = float(self.limiter.limit)
            # Our count of tasks running is at least the service's (its finishes reach us late): the lowest count
            # at a "full" is the closest to its capacity.
            if self.cap_level is None or running < self.cap_level:  # this reading sets the level
                self._cap_accepted, self._cap_high, self._cap_epoch = accepted, running, self.epoch
            self.cap_level = max(1, running if self.cap_level is None else min(running, self.cap_level))
            self.limiter.cap = float(self.cap_level) if again else None
            self.limiter.on_saturated(running)
        if kind != "capacity":
            if kind == "rate" and self.cap_level is not None and running < self.cap_level - _lag(self.cap_level):
                self._not_full(f"refused again with {running} running")  # not full, then or now
            self.strikes += 1
            self.rate_level = max(1, accepted)
            self.window.learn(accepted)
            self.learned_count = self.window.count
            if self.strikes > 1:
                pause = self.cooldown.trigger(self.strikes - 1, retry_after)
        if retry_after is not None and not pause:
            pause = self.cooldown.trigger(max(1, self.strikes), retry_after)
        return Verdict(kind, accepted, running, pause)

    def on_create_success(self, held_when_sent: int | None = None) -> None:
        """A create the service took; `held_when_sent`: our tasks it had when the call left, running or being asked
        for in other calls (None: unknown). Cut at a first, unconfirmed "full", a create sent with fewer than that
        level refilled a slot seen free and does not raise the in-flight limit: counted per refill, the first batch
        of finishes seen at once raised it by a slot each, and a second burst went past a full service
        (`capacity`: 21 refused)."""
        self.strikes = 0
        if self.cap_level is not None:
            # Ran more than the "full" level without a refusal? Our count of tasks running is ahead of the
            # service's by its finishes not seen yet (`_lag`); the tasks younger than its fastest finishes
            # (`young`, with the one just created) surely run there.
            young = self.young()
            if young is not None:
                self.seen_running(young + 1, "surely running since")
            elif self.limiter.running + 1 > self.cap_level + _lag(self.cap_level):
                self._refuted(f"{self.limiter.running + 1} running since")
        self.window.on_success()
        level = self.cap_level if self.limiter.cap is None else None  # a "full" level, not confirmed yet
        refill = held_when_sent is not None and level is not None and held_when_sent < level
        self.limiter.on_success(beyond=not refill)

    def full_level(self) -> int | None:
        """The most tasks the service can have run for us at one moment if its "full" was capacity, or None (no
        "full" level held): the level, or more running at the 429s of its burst (their accepts may be handled
        after its first 429), and a little for our late stamps (`_slack`)."""
        if self.cap_level is None:
            return None
        level = max(self.cap_level, self._cap_high)
        return level + _slack(level)

    def seen_running(self, count: int, how: str) -> None:
        """`count` tasks of ours were running at the service at one moment: more than a "full" level allows is
        proof that its 429 was not capacity (`how`: the evidence, for -v)."""
        most = self.full_level()
        if most is not None and count > most:
            self._refuted(f"{count} {how}")

    def _refuted(self, why: str) -> None:
        """The service ran more than the "full" level: that 429 was the window's — if the window has not taken
        more since, its rate, learned."""
        if self.rate_level is None and self.window.accepted() <= self._cap_accepted + 1:
            self.rate_level = self._cap_accepted
            self.window.learn(self._cap_accepted)
            self.learned_count = self.window.count
        self._not_full(why)

    def _not_full(self, why: str) -> None:
        """The "full" level was no capacity: forgotten, and the in-flight limit it cut given back (`corrected`
        says so, for -v)."""
        level, self.cap_level, self.limiter.cap = self.cap_level, None, None
        if self._limit_before_cap is not None:
            self.limiter.restore(self._limit_before_cap)
            self._limit_before_cap = None
        self.corrected = (
            f"the 429 taken for capacity at {level} tasks running was the create window's ({why}): in-flight "
            f"limit {self.limiter.limit}, create window {self.window.count}/{self.window.seconds:g} s"
        )

    def take_corrected(self) -> str | None:
        """The last "full" reading found wrong (`corrected`), once: for -v, whichever part of the run saw it."""
        said, self.corrected = self.corrected, None
        return said

    def on_status_saturated(self) -> None:
        self.status.on_saturated()

    def on_status_success(self) -> None:
        self.status.on_success()


def _lag(level: int) -> int:
    """How far ahead of the service's our count of tasks running may be (its finishes we have not seen yet)."""
    return max(2, level // 4)


def _slack(level: int) -> int:
    """How far a count may be from a level and still be at it: a tenth, at least one."""
    return max(1, level // 10)
