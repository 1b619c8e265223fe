"""The latency distribution of the service's tasks, as the poll scheduler (polls.py) learns it: finished tasks
and tasks still running (Kaplan-Meier), and when a remembered estimate (memory.py) serves, or this run's tasks
say it is wrong.

Pure arithmetic over the ages it is told; no clock, no asyncio.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

MIN_FINISHED = 5  # finished tasks of this run before its own estimate replaces the remembered one
MIN_CONTRADICTING = 3  # tasks (expected to have finished, or finished below the low end) that overrule a prior
UNLIKELY = 0.02  # this run's tasks contradict the prior when what they did had less chance than this under it
CHANCE_UP_TO = 10  # ... counted exactly up to this many finishes (beyond, a third or three times is no chance)
KEEP = 1000  # finished latencies kept: enough for the quantiles, and it follows a service that changes pace


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Task latency in seconds: the low end (5%), the median and the high end (95%)."""

    low: float
    median: float
    high: float
    # Whether the high end is estimated (else it stands in: the slowest finish seen, while many still run).
    high_known: bool = field(default=True, compare=False)
    # Whether the median is estimated (else it stands in: the largest age seen, a lower bound).
    median_known: bool = field(default=True, compare=False)


class LatencyModel:
    """The latency distribution of the service's tasks, from finished tasks and tasks still running.

    A finished task gives its latency; a task seen running at age `a` says only "longer than a" (a censored
    observation). The Kaplan-Meier estimator uses both, so the early estimate is not biased towards the fast tasks
    that happened to finish first. Where the estimate does not reach a quantile yet, the largest age observed is
    the (conservative) stand-in. Until `MIN_FINISHED` tasks have finished, a remembered `prior` is used.
    """

    def __init__(self, prior: Quantiles | None = None) -> None:
        self.prior = prior
        self.contradicted = False  # this run's tasks said the prior is wrong: it serves no more
        self.exact_count = 0  # finished latencies from the service's own clock (createTime/completeTime)
        self._finished: deque[float] = deque(maxlen=KEEP)
        self._running: dict[str, float] = {}  # task id -> the largest age at which it was seen running
        self._cached: Quantiles | None = None
        self._expected: float | None = None
        self._dirty = True

    @property
    def finished_count(self) -> int:
        return len(self._finished)

    def finished(self, task_id: str, latency: float, *, exact: bool = False) -> None:
        self._running.pop(task_id, None)
        self._finished.append(max(0.0, latency))
        self.exact_count += exact
        self._dirty, self._expected = True, None

    def running(self, task_id: str, age: float) -> None:
        if age > self._running.get(task_id, -1.0):
            self._running[task_id] = age
            self._dirty, self._expected = True, None

    def forget(self, task_id: str) -> None:
        """A task that leaves without being seen finished (timeout, stop): its observation goes with it."""
        if self._running.pop(task_id, None) is not None:
            self._dirty, self._expected = True, None

    def quantiles(self) -> Quantiles | None:
        """This run's estimate, the remembered one until this run has enough (or contradicts it), or None
        (nothing known: cold)."""
        if len(self._finished) < MIN_FINISHED and self.prior is not None and not self._contradicts(self.prior):
            return self.prior
        return self.own()

    def on_prior(self) -> bool:
        """Whether the remembered estimate is in use and no task of this run finished where it said they would
        (an absurd prior — a day per image — would otherwise keep every task from being asked)."""
        prior = self.prior
        if prior is None or len(self._finished) >= MIN_FINISHED or self._contradicts(prior):
            return False
        return all(latency < prior.low for latency in self._finished)

    def _contradicts(self, prior: Quantiles) -> bool:
        """Whether this run's tasks, censored ones included, say the remembered latencies are wrong.

        Slower: by the ages at which tasks were seen still running, the prior expects `expected` of them to have
        finished already; fewer than a third of that did (none finished before T, where the prior said most
        would). Faster: MIN_CONTRADICTING tasks finished below its low end (it expects 1 in 20 there). Either
        only when it is unlikely under the prior (a chance below UNLIKELY), not merely fewer or more: 0 finished
        where it expects 3 is a 1-in-25 chance when 30 tasks have each a tenth (a slow night's first queries,
        just past the low end), 1 in 80 when 10 have each a third; and 3 below the low end are what it expects
        of 60 tasks.
        """
        if self.contradicted:
            return True
        if self._expected is None:
            finished = list(self._finished)
            shares = [_share_by(prior, age) for age in [*finished, *self._running.values()]]
            self._expected = sum(shares)
            early = sum(1 for latency in finished if latency < prior.low)
            slower = self._expected >= MIN_CONTRADICTING and _unlikely_at_most(len(finished), shares)
            faster = early >= MIN_CONTRADICTING and _unlikely_at_least(early, [min(s, 0.05) for s in shares])
            self.contradicted = slower or faster
        return self.contradicted

    def own(self) -> Quantiles | None:
        """This run's own estimate, whatever the prior; None before a task finished."""
        if not self._finished:
            return None
        if self._dirty or self._cached is None:
            self._cached = self._estimate()
            self._dirty = False
        return self._cached

    def _estimate(self) -> Quantiles:
        steps = kaplan_meier(list(self._finished), list(self._running.values()))
        largest = max(max(self._finished), max(self._running.values(), default=0.0))
        low, median, high = (quantile(steps, share) for share in (0.05, 0.5, 0.95))
        # Not reached yet: the median is at least the largest age seen (a conservative gap); the high end is
        # taken as the slowest finish seen, so that a task older than every finished one counts as an outlier.
        median_known = median is not None
        median = median if median is not None else largest
        return Quantiles(
            low=low if low is not None else min(self._finished),
            median=median,
            high=max(high if high is not None else max(self._finished), median),
            high_known=high is not None,
            median_known=median_known,
        )


def _share_by(prior: Quantiles, age: float) -> float:
    """The share of tasks the prior says finish by `age`: piecewise linear through its quantiles."""
    points = [(0.0, 0.0), (prior.low, 0.05), (prior.median, 0.5), (prior.high, 0.95), (2 * prior.high, 1.0)]
    for (t0, f0), (t1, f1) in itertools.pairwise(points):
        if age <= t1:
            return f0 if t1 <= t0 else f0 + (f1 - f0) * (age - t0) / (t1 - t0)
    return 1.0


def _chance_at_most(count: int, shares: list[float]) -> float:
    """The chance that at most `count` of independent tasks finished, each with its own chance in `shares`."""
    chance = [1.0] + [0.0] * count  # chance[k]: exactly k finished among the tasks so far
    for share in shares:
        for k in range(count, 0, -1):
            chance[k] = chance[k] * (1 - share) + chance[k - 1] * share
        chance[0] *= 1 - share
    return sum(chance)


def _unlikely_at_most(count: int, shares: list[float]) -> bool:
    """Whether `count` finished or fewer is a third of what `shares` expect and has less chance than UNLIKELY
    (counted exactly up to CHANCE_UP_TO finishes; beyond, a third of the expected is never by chance)."""
    if count >= sum(shares) / 3:
        return False
    return count >= CHANCE_UP_TO or _chance_at_most(count, shares) < UNLIKELY


def _unlikely_at_least(count: int, shares: list[float]) -> bool:
    """Whether `count` finished or more is three times what `shares` expect and has less chance than UNLIKELY."""
    if count <= 3 * sum(shares):
        return False
    return count > CHANCE_UP_TO or 1 - _chance_at_most(count - 1, shares) < UNLIKELY


def kaplan_meier(events: list[float], censored: list[float]) -> list[tuple[float, float]]:
    """The estimated distribution function as steps [(time, share finished by then)], from event times and
    right-censored times (a censored time counts as still at risk at an event of the same time)."""
    points = sorted([(t, 0) for t in events] + [(t, 1) for t in censored])
    total = len(points)
    surviving = 1.0
    steps: list[tuple[float, float]] = []
    i = 0
    while i < total:
        at, start, ended = points[i][0], i, 0
        while i < total and points[i][0] == at:
            ended += points[i][1] == 0
            i += 1
        if ended:
            surviving *= 1 - ended / (total - start)  # `total - start` tasks were still running just before `at`
            steps.append((at, 1 - surviving))
    return steps


def quantile(steps: list[tuple[float, float]], share: float) -> float | None:
    """The first time by which `share` of the tasks finished, or None if the estimate does not reach it."""
    for at, done in steps:
        if done >= share - 1e-9:
            return at
    return None
