"""An item's task watched until it is finished: its poll loop under the poll scheduler, one recordInfo's answer
read (a 429 slows the status queries, not the work; a refusal is one query's or the run's), and lost tasks.

A task the service no longer knows, created over a day ago, is lost (failed, kind `lost`): only --retry-failed
pays for it again. A younger unknown task may just not be visible yet, and is polled like any other.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import time
from collections.abc import Callable
from typing import NoReturn

from .access import Refusals
from .answers import TaskRecord
from .client import Client
from .config import RunSettings
from .errors import (
    AuthError,
    BatchgenError,
    QuotaError,
    RateLimited,
    ServiceError,
    TransportError,
    UsageError,
    WayRefused,
)
from .ledger import ErrorRecord, Ledger, error_record
from .limits import Throttle
from .manifest import Item
from .outcome import Counters
from .polls import PollScheduler
from .progress import Reporter
from .submit import Stopped

LOST_AFTER = 24 * 3600.0  # seconds: an unknown task older than this was forgotten by the service (it keeps
#                           task records for weeks, not forever); a younger one may just not be visible yet


class Watcher:
    """The status side of the engine's items: when to ask, what an answer means, whether a task is lost."""

    def __init__(
        self,
        settings: RunSettings,
        client: Client,
        polls: PollScheduler,
        throttle: Throttle,
        ledger: Ledger,
        reporter: Reporter,
        counters: Counters,
        *,
        callback_url: str | None,
        stop: Callable[..., None],
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.client = client
        self.throttle = throttle
        self.limiter = throttle.limiter
        self.polls = polls
        self.reporter = reporter
        self.counters = counters
        self.callback_url = callback_url
        self.stop = stop
        self.poll_refusals = Refusals()  # 401/403 on recordInfo: the run's, or one query's (see access.py)
        self._service_created: dict[str, float] = {}  # task id -> the service's createTime (Unix s), once seen

    async def wait(
        self, item: Item, task_id: str, first_poll: float | None, sent: float | None = None
    ) -> TaskRecord | None:
        """Poll until the task is finished, when the poll scheduler says; None after --task-timeout.

        `first_poll` is not None for a task resumed from an earlier run: its age is unknown, so it is asked at
        once. A task whose callback comes to this run's listener is polled only as the fallback. `sent`: when its
        createTask left (time.monotonic), the earliest the service can have created it.
        """
        deadline = time.monotonic() + self.settings.task_timeout
        fallback = bool(self.callback_url and not item.callback_url)
        ago = None if sent is None else time.monotonic() - sent
        self.polls.add(task_id, fallback=fallback, resumed=first_poll is not None, sent_ago=ago)
        if first_poll is not None:
            self.limiter.started()  # resumed: running at the service (a new task is counted from its answer)
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self.polls.turn(task_id)
                except TimeoutError:
                    self.reporter.warning(
                        f"item {item.id!r}: task {task_id} not finished after --task-timeout "
                        f"{self.settings.task_timeout:g} s; it stays submitted, rerun to pick it up",
                        item=item.id,
                    )
                    return None
                record = await self._ask(task_id)
                if record is None:  # no usable answer this time (429, 5xx, network)
                    self.polls.observe(task_id, None)
                    continue
                self.polls.observe(task_id, record.finished, record.created, record.completed, unknown=record.unknown)
                self._say_checked()
                if record.finished or self._lost(item, task_id, record):
                    return record
        finally:
            self.limiter.ended()  # the one count of tasks in flight, the limiter's: this one left it
            self.polls.remove(task_id)

    def _say_checked(self) -> None:
        """-v: what an answer did to a "full" reading (fullcheck.py): refuted it, or ended a check that held."""
        if said := self.throttle.take_corrected():
            self.reporter.debug(said)
        if self.polls.check.said is not None:
            self.reporter.debug(self.polls.check.said)
            self.polls.check.said = None

    def wake(self, task_id: str) -> None:
        """A callback says this task may be finished: ask recordInfo now rather than at the next poll."""
        if self.polls.wake(task_id):
            self.counters.callbacks += 1

    async def query(self, task_id: str) -> TaskRecord | None:
        """One recordInfo outside the poll schedule (fresh result URLs), first in line for the shared budget."""
        await self.polls.acquire()
        return await self._ask(task_id)

    async def _ask(self, task_id: str) -> TaskRecord | None:
        """One recordInfo, its budget already granted; None when there is no answer worth acting on yet."""
        self.counters.polls += 1
        try:
            record = await self.client.record_info(task_id)
            self.throttle.on_status_success()
            self.poll_refusals.on_success()
            return record
        except RateLimited:
            # Status queries have their own budget at the service: a 429 here slows the queries, not the work.
            self.counters.rate_limited += 1
            self.throttle.on_status_saturated()
            self.reporter.debug(f"recordInfo {task_id}: 429; status queries now {self.throttle.status.rate:g}/s")
        except (AuthError, QuotaError) as exc:
            if not self.poll_refusals.item_only(exc):
                self._refused(exc)
            self.reporter.debug(f"recordInfo {task_id}: refused ({exc}) while other queries succeed; asking later")
        except (UsageError, WayRefused) as exc:
            self._refused(exc)
        except (ServiceError, TransportError) as exc:
            self.reporter.debug(f"recordInfo {task_id}: {exc}; asking again later")
        return None

    def _refused(self, exc: BatchgenError) -> NoReturn:
        self.stop("refused", fatal=exc)
        raise Stopped from exc

    def _lost(self, item: Item, task_id: str, record: TaskRecord) -> bool:
        """Whether an unknown task is lost: the service forgot it, created over LOST_AFTER ago.

        Its age is the older of our submitted_at and the service's createTime (when it ever told us): a task
        younger than that may just not be visible yet, and is polled until --task-timeout like any other.
        """
        if record.created is not None:
            self._service_created.setdefault(task_id, record.created)
        if not record.unknown:
            return False
        created: list[float] = []
        if task_id in self._service_created:
            created.append(self._service_created[task_id])
        submitted = self.ledger.record(item.id)["submitted_at"]
        if submitted:
            with contextlib.suppress(ValueError):
                created.append(calendar.timegm(time.strptime(submitted, "%Y-%m-%dT%H:%M:%SZ")))
        return bool(created) and time.time() - min(created) > LOST_AFTER


def lost_error(task_id: str) -> ErrorRecord:
    return error_record(
        "lost",
        None,
        f"the service no longer knows task {task_id}, created over {LOST_AFTER / 3600:g} h ago; "
        "a new submission is paid again",
    )
