"""The poll scheduler: which task to ask recordInfo about next, under the run's one status budget.

Every status query of a run is granted here, under the status budget (budget.StatusBudget: `--poll-rate` per
second, whatever the number of tasks in flight). The rules:

- **Never before a task could plausibly be finished.** A task is first asked at the low end of the latencies
  (the 5th percentile) plus one gap (a quarter of the median), then once a gap: found, on average, an eighth of
  a latency after it finished. When the service is full and items wait for a slot, first at the low end.
- **Oldest first.** When more tasks are due than the budget allows, the oldest go first: they are the likeliest
  to be finished. A callback's hint (and a query the download needs) goes before all of them.
- **Spend the idle budget on the tail.** While tasks wait to be created, a detection delay costs nothing (the
  create window sets the pace); once none do, the last tasks decide when the run ends, so the gap shrinks to
  what half the budget allows across the tasks that could be finished, but no task more often than once an
  eighth of the median. When the remembered service agrees with this run and the median is estimated (not a
  stand-in), a ninth, and a task is first asked half a gap after the low end: the few finishes below the low
  end are then not found a whole gap late (on a slow night, 120 +/- 60 s, they and the eighth set the p95).
- **A "full" reading is checked by asking.** While a first 429 read as "full" is unconfirmed and this run holds
  more tasks than it allows, the oldest are asked at once (fullcheck.py): found running, more than the level
  allows, it was the create window's.
- **Outliers back off.** A task older than the slowest latency seen (the 95th percentile) is asked less and
  less often as it ages, as the family advises for old tasks.
- **Learn from this run.** Latencies come from the tasks this run created (never a resumed one), the tasks
  still running counting as "longer than that" (Kaplan-Meier): the first, fastest finishes are not the whole
  distribution. An earlier run's (memory.py) is the start until a few finish, or this run's tasks contradict it.
- **Cold start.** With no data (or a remembered estimate not yet confirmed, `PRIOR_PROBE_FACTOR` times slower),
  probe the oldest task, one at a time, at `--poll-interval` (backing off as it ages), not every young task.
- **Callbacks.** A task whose callback goes to this run's listener is polled only as the fallback: after the
  slowest latency seen plus a long gap, and then `FALLBACK_FACTOR` times less often.

Pure bookkeeping over an injected clock, plus a small asyncio driver (`run`, `turn`); it knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import PollSchedule
from .fullcheck import FullCheck
from .latency import MIN_FINISHED as MIN_FINISHED  # memory.py's, as before latency.py
from .latency import LatencyModel
from .latency import Quantiles as Quantiles
from .limits import Clock, Throttle

PRIOR_PROBE_FACTOR = 4.0  # while a remembered estimate is unconfirmed, the cold probe goes on this much slower
GAP_SHARE = 0.25  # a task is asked about once every quarter of the median latency
TAIL_SHARE = 0.5  # in the tail, the share of the status budget spent asking the tasks that may be finished
TAIL_GAP_SHARE = 1 / 8  # ... but no task more often than once every 1/8 of the median latency
TAIL_GAP_SHARE_KNOWN = 1 / 9  # ... 1/9 when the latencies are sure (a remembered service agrees with the run)
FALLBACK_FACTOR = 4.0  # with callbacks on, polling is the fallback and runs this much less often
TICK = 0.001  # the driver never sleeps less than this (a guard against spinning on float rounding)


@dataclass(slots=True)
class _Task:
    task_id: str
    created: float | None  # on the scheduler's clock; None until known (a task resumed from an earlier run)
    fallback: bool  # its callback comes to this run: polling is only the fallback
    resumed: bool = False  # created by an earlier run: its age is not its latency, it teaches none
    sent: float | None = None  # when its createTask left: the service created it after (`young`'s lower bound)
    asked: float | None = None  # when it was last granted a query
    woken: bool = False  # a callback said it may be finished
    waiting: bool = False  # its poller waits for a turn
    waiter: asyncio.Future[None] | None = field(default=None, repr=False)


class PollScheduler:
    """Grants every status query of the run. `add` a task, `await turn(task_id)` before each query of it,
    `observe` what the query said, `remove` it when done; `run()` is the driver (one per run)."""

    def __init__(
        self,
        throttle: Throttle,
        cold: PollSchedule,
        *,
        prior: Quantiles | None = None,
        in_tail: Callable[[], bool] = lambda: False,
        clock: Clock | None = None,
        wall: Clock = time.time,
    ) -> None:
        self.throttle = throttle
        self.budget = throttle.status
        self.cold = cold
        self.model = LatencyModel(prior)
        self.in_tail = in_tail
        self.clock = clock or throttle.clock
        self.wall = wall
        self.floor = cold.first / 10  # the shortest gap between two queries of one task
        self._tasks: dict[str, _Task] = {}
        self._extra: deque[asyncio.Future[None]] = deque()  # queries outside the schedule (fresh result URLs)
        self._extra_count = 0  # the same, for the pure bookkeeping in tests (no futures)
        self._last_probe: float | None = None
        self.wakeup: float | None = None  # when the last `grant` found the next query may be due
        self.full = False  # the service is full and items wait for a slot: a task is first asked at the low end
        self.check = FullCheck(throttle)  # a "full" level checked by asking the tasks held (fullcheck.py)
        self._forced: set[str] = set()  # the tasks it asks at once
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------- what the engine tells us

    def add(
        self, task_id: str, *, fallback: bool = False, resumed: bool = False, sent_ago: float | None = None
    ) -> None:
        """A task to poll: just created (its age starts now; its createTask left `sent_ago` seconds ago), or
        `resumed` from an earlier run (age unknown until its first answer, so it is asked at once)."""
        now = self.clock()
        sent = None if resumed else now - (sent_ago or 0.0)
        self._tasks[task_id] = _Task(task_id, None if resumed else now, fallback, resumed, sent=sent)
        self.check.added += 1
        self._changed.set()

    def ready(self, task_id: str) -> None:
        """The task's poller waits for its next turn (`turn` says it; tests say it by hand)."""
        self._tasks[task_id].waiting = True
        self._changed.set()

    def young(self) -> int:
        """Tasks of this run younger than the low end of its latencies: surely still running (none before a finish)."""
        if (known := self.model.own()) is None:
            return 0
        since = self.clock() - known.low
        # From when its createTask left, not when the answer came: a loaded loop stamps the answer late, and a task
        # the service finished would be counted as running (a real "full" then taken for the window's).
        return sum(1 for t in self._tasks.values() if t.sent is not None and t.sent > since)

    def remove(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self.model.forget(task_id)
        self.check.removed(task_id)
        self._changed.set()

    def wake(self, task_id: str) -> bool:
        """A callback says this task may be finished: it goes first in line. Whether the task is ours."""
        task = self._tasks.get(task_id)
        if task is None:
            return False
        task.woken = True
        self._changed.set()
        return True

    def observe(
        self,
        task_id: str,
        finished: bool | None,
        created: float | None = None,
        completed: float | None = None,
        *,
        unknown: bool = False,
    ) -> None:
        """What a granted query said: `finished` True/False, or None when there was no usable answer; the
        service's createTime/completeTime (Unix seconds) when it sent them; `unknown`: the service did not know
        the task (not finished, but no proof it runs)."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        now = self.clock()
        if task.created is None and created is not None:
            task.created = now - max(0.0, self.wall() - created)  # a resumed task: its age from the service
        self.check.answered(task, finished, unknown)
        if finished is None or task.created is None or task.resumed:
            return  # a task from an earlier run never counts toward latency: its age is not its latency
        if finished:
            if completed is not None and created is not None and completed >= created:
                self.model.finished(task_id, completed - created, exact=True)  # the service's own clock: exact
            else:
                self.model.finished(task_id, now - task.created)  # first seen finished: at most that
        elif task.asked is not None:
            self.model.running(task_id, task.asked - task.created)  # running when the query left, at least

    # ---------------------------------------------------------------- the decision

    def due(self, task: _Task, known: Quantiles | None, tail_gap: float | None = None) -> float:
        """When `task` may next be asked, on the clock, given the latencies `known` (math.inf: not by its
        schedule; a cold probe may)."""
        if task.woken or task.created is None:
            return -math.inf
        if task.task_id in self._forced:
            return -math.inf  # a "full" level is checked: asked at once
        if known is None:
            return math.inf  # cold: only the probe asks
        gap = max(self.floor, GAP_SHARE * known.median)
        if task.fallback:
            gap *= FALLBACK_FACTOR
            first = known.high + gap
        else:
            lead = gap
            if tail_gap is not None:
                gap = min(gap, tail_gap)
                # In the tail, with the whole estimate (its high end known), half a gap after the low end: the
                # few tasks that finish below the low end are not found a whole gap late (they set the p95).
                lead = gap / 2 if self._sure(known) else gap
            first = known.low + (0.0 if self.full else lead)  # full: a slot seen free is a create sooner
        if task.asked is None:
            return task.created + first
        # Past the high end, a task is an outlier: back off as it ages, as the family advises for old tasks — once
        # the high end is known; before, tasks older than every finish so far are the bulk of a slow night.
        if known.high_known:
            gap = max(gap, (task.asked - task.created - known.high) / 2)
        return max(task.created + first, task.asked + gap)

    def _sure(self, known: Quantiles) -> bool:
        """Whether the latencies are known well enough to place the tail's queries tightly: the median is
        estimated (not a stand-in), and the remembered service agreed with this run's tasks while it served (its
        verdict is not worked out again on every answer once this run's own estimate serves: O(tasks) each)."""
        return known.median_known and self.model.prior is not None and not self.model.contradicted

    def _tail_gap(self, now: float, known: Quantiles | None) -> float | None:
        """In the tail, the gap that spends TAIL_SHARE of the budget on the tasks that may be finished."""
        if known is None or not self.in_tail():
            return None
        eligible = sum(
            1 for t in self._tasks.values() if not t.fallback and t.created is not None and now - t.created >= known.low
        )
        share = TAIL_GAP_SHARE_KNOWN if self._sure(known) else TAIL_GAP_SHARE
        return max(self.floor, share * known.median, eligible / (TAIL_SHARE * self.budget.rate))

    def _probe(self, now: float, known: Quantiles | None) -> tuple[_Task | None, float]:
        """Cold start: the task to probe next (the oldest, least recently asked) and when.

        Also while a remembered estimate is unconfirmed, slower, and only for tasks past its first query or
        past the family's quick-polling phase (12 cold intervals), whichever comes first: an absurd memory (a
        day per image, clamped to --task-timeout) is found wrong by the first tasks, not after the timeout."""
        factor, start = 1.0, 0.0
        if known is not None:
            if not self.model.on_prior():
                return None, math.inf
            factor = PRIOR_PROBE_FACTOR
            start = min(known.low + max(self.floor, GAP_SHARE * known.median), 12 * self.cold.first)
        waiting = [
            t for t in self._tasks.values() if t.created is not None and t.waiting and not (start and t.fallback)
        ]  # a task whose callback comes to us is not probed to check a memory: the callback will tell
        if not waiting:
            return None, math.inf
        task = min(waiting, key=lambda t: (t.asked if t.asked is not None else t.created, t.created))
        assert task.created is not None
        interval = self.cold.interval(now - task.created) * (FALLBACK_FACTOR if task.fallback else factor)
        if known is None and not task.fallback and self.in_tail():
            # Nothing waits to be created: until the first finish is found, every finished task waits for it.
            # Probe faster with more tasks in flight (2/3 of the square root: a slow night of 60 tasks, ~5x).
            interval /= max(1.0, math.sqrt(len(waiting)) / 1.5)
        since = self._last_probe if self._last_probe is not None else task.created
        return task, max(since + interval, task.created + start)

    def _schedule(self, now: float) -> tuple[list[tuple[float, _Task]], _Task | None, float]:
        """Every waiting task with the time it is due, the cold probe (if any) and when it is due."""
        known = self.model.quantiles()
        tail_gap = self._tail_gap(now, known)
        self.full = self.throttle.cap_level is not None and self.throttle.limiter.waiting > 0
        self._forced = self.check.asks(now, self._tasks)
        times = [(self.due(t, known, tail_gap), t) for t in self._tasks.values() if t.waiting]
        return (times, *self._probe(now, known))

    def grant(self) -> list[str]:
        """Hand out every query that is due and fits the budget, first in line first; the task ids granted
        (extra queries first, as ""). Also works out when the next may be due (`wakeup`)."""
        now = self.clock()
        granted: list[str] = []
        while self._extra_count and self.budget.take():
            self._extra_count -= 1
            granted.append("")
            while self._extra:
                waiter = self._extra.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
        times, probe, probe_at = self._schedule(now)
        due = [t for at, t in times if at <= now]
        if probe is not None and probe_at <= now and probe not in due:
            due.append(probe)
        due.sort(key=lambda t: (not t.woken, t.created if t.created is not None else -math.inf))
        for task in due:
            if not self.budget.take():
                break
            if task is probe:
                self._last_probe = now
            task.asked = now
            task.woken = False
            task.waiting = False
            asking, task.waiter = task.waiter, None
            if asking is not None and not asking.done():
                asking.set_result(None)
            granted.append(task.task_id)
        later = [at for at, t in times if t.waiting]
        if probe is not None and self._last_probe == now:  # probed just now: the next probe, if still cold
            probe_at = self._probe(now, self.model.quantiles())[1]
        self.wakeup = self._wakeup_from([*later, probe_at])
        return granted

    def next_wakeup(self) -> float | None:
        """When `grant` may have something to hand out next (None: only when something changes)."""
        times, _, probe_at = self._schedule(self.clock())
        return self._wakeup_from([at for at, _ in times] + [probe_at])

    def _wakeup_from(self, times: list[float]) -> float | None:
        if self._extra_count:
            times.append(-math.inf)
        earliest = min(times, default=math.inf)
        if math.isinf(earliest) and earliest > 0:
            return None
        return max(earliest, self.budget.next_free())

    # ---------------------------------------------------------------- asyncio

    async def turn(self, task_id: str) -> None:
        """Wait until this task's next query is granted (the budget is spent for it)."""
        task = self._tasks[task_id]
        task.waiter = asyncio.get_running_loop().create_future()
        self.ready(task_id)
        try:
            await task.waiter
        finally:
            task.waiter = None
            task.waiting = False

    async def acquire(self) -> None:
        """A query outside the schedule (a fresh result URL for a download): first in line, same budget."""
        waiter = asyncio.get_running_loop().create_future()
        self._extra.append(waiter)
        self._extra_count += 1
        self._changed.set()
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.done():
                self._extra_count -= 1
            raise

    async def run(self) -> None:
        """The driver: grant what is due, sleep until the next thing may be, or until something changes."""
        while True:
            if (pause := self.throttle.cooldown.remaining) > 0:  # everyone pauses together after 429s
                await asyncio.sleep(pause)
                continue
            self.grant()
            wakeup = self.wakeup
            self._changed.clear()
            delay = None if wakeup is None else max(TICK, wakeup - self.clock())
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that arrives as
            # the event is set, and the run would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()
