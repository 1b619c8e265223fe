"""A "full" reading put to the test by asking the tasks held: the poll scheduler's part of telling a 429 that
means "full" (capacity) from one that means "too fast" (rate).

The first createTask 429 of a run with the create window not full is read as capacity (limits.Throttle): the
in-flight limit drops to the tasks running, the window is kept. A rate limit's first 429 looks the same. When
the service then accepts more creates than that level allows, without a refusal, either it was never full or it
finished some of our tasks that we have not seen finished yet — our count of tasks running includes those. The
tasks' ages cannot tell before a first finish is seen (limits: `young`); asking them can. A task asked after a
moment and found still running was running at that moment (it was created before it, and tasks do not restart):
more of them than the level allows, at one moment, is proof that the 429 was not the service being full. It is
order, not timing: a loaded loop that handles answers late cannot make a finished task count as running.

A true "full" (the level at least the service's count of our tasks) is never refuted so — at most the level
ran at that moment — and the finishes the queries find are slots seen free, under capacity the next creates.

Pure bookkeeping over the scheduler's tasks and the clock it is given; no asyncio, no HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from .limits import Throttle


class Held(Protocol):
    """What the check reads of a task the poll scheduler holds (polls._Task)."""

    task_id: str
    created: float | None
    fallback: bool
    asked: float | None


class FullCheck:
    """Checks the throttle's "full" level (`full_level()`: the most the service can have run for us at one moment
    if its 429 was capacity) by asking the tasks held.

    A check opens when more tasks are held than the level allows, the level not yet confirmed by a second "full"
    (`limiter.cap`), and a task was added since the last check opened (the service accepted a create). Its
    members are the tasks held then (not those polled only as a callback's fallback). Only as many of the oldest
    are asked at a time as could still go past the level, so a check costs at most one query per task it holds;
    it is over when refuted, when too few are left to go past the level, or when the level moves.
    """

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle
        self.at = -math.inf  # when the open check opened (the moment its members' answers speak of)
        self.most: int | None = None  # the level it checks; None: no check open
        self.members: set[str] = set()  # not answered since `at` yet
        self.running = 0  # members found running by a query granted after `at`
        self.added = 0  # tasks added to the scheduler so far ...
        self._opened_at = 0  # ... when the last check opened
        self._held = 0  # members when it opened
        self.said: str | None = None  # a check over without a refutation, for -v (the watcher says it)

    @property
    def open(self) -> bool:
        return self.most is not None

    def asks(self, now: float, tasks: Mapping[str, Held]) -> set[str]:
        """The tasks to ask at once (their query is due now): the oldest members not asked since the check
        opened, as many as could still go past the level. Opens a check when one is due."""
        most = self.throttle.full_level()
        if self.most is not None and self.most != most:
            self.most = None
        if self.most is None:
            if most is None or self.throttle.limiter.cap is not None or self.added == self._opened_at:
                return set()
            members = {t.task_id for t in tasks.values() if not t.fallback}
            if len(members) <= most:
                return set()
            self.at, self.most, self.members, self.running, self._held = now, most, members, 0, len(members)
            self._opened_at = self.added
        unasked: list[Held] = []
        pending = 0
        for task_id in self.members:
            task = tasks[task_id]
            if task.asked is not None and task.asked >= self.at:
                pending += 1
            else:
                unasked.append(task)
        unasked.sort(key=lambda t: -math.inf if t.created is None else t.created)
        return {t.task_id for t in unasked[: max(0, self.most + 1 - self.running - pending)]}

    def answered(self, task: Held, finished: bool | None, unknown: bool) -> None:
        """A task's answer: from a member to a query granted after the check opened, still running counts (past
        the level, the "full" is refuted); finished, or not known to the service, it cannot."""
        if self.most is None or task.task_id not in self.members:
            return
        if finished is None or task.asked is None or task.asked < self.at:
            return  # no usable answer, or to a query granted before the check: asked again
        self.members.discard(task.task_id)
        if not finished and not unknown:
            self.running += 1
            if self.running > self.most:
                self.most = None
                self.throttle.seen_running(self.running, "seen running at once")
                return
        self._over_unless_possible()

    def removed(self, task_id: str) -> None:
        """A task the scheduler no longer holds (seen finished, timed out): it cannot count."""
        if self.most is not None and task_id in self.members:
            self.members.discard(task_id)
            self._over_unless_possible()

    def _over_unless_possible(self) -> None:
        if self.most is not None and self.running + len(self.members) <= self.most:
            gone = self._held - self.running - len(self.members)
            self.said = (
                f'the "full" level held when checked: of the {self._held} tasks held, {gone} had finished (or were '
                f"unknown there), so no more than {self.most} ran at once"
            )
            self.most = None
