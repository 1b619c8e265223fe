"""The run: submit, poll and download every item of a plan under shared limits, recording each step.

One coroutine per item in flight, created only once the in-flight limiter gave it a slot (so a 100,000-item
manifest never holds 100,000 tasks), all owned by one TaskGroup. An item's life:

    pending --start_submit--> (createTask) --submitted--> (poll recordInfo) --> success --> download --> succeeded
                                                                          \\--> fail: transient -> pending again
                                                                                     otherwise -> failed

The slot is released when the task is finished at the service (success or fail), before the download, so the
service's capacity, not our disk, paces the work. A stop (signal, --max-runtime, a refused key) cancels the
work at once; a createTask call already sent is shielded and allowed to finish within its own timeout
(`Timeouts.create`, which fits the systemd unit's stop timeout), its task id recorded before the ledger closes.
A second signal abandons those calls: their items are marked in doubt.

The createTask side (money: paid and in-doubt creates, --limit, one owner per task id) is submit.py's
Submitter. A task the service no longer knows, created over a day ago, is lost (failed, kind `lost`): only
--retry-failed pays for it again.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import random
import time
from collections import Counter
from collections.abc import Mapping

from . import download, failures, memory, rolls
from .access import Refusals
from .answers import TaskRecord
from .client import Client
from .config import RunSettings
from .errors import (
    AuthError,
    BatchgenError,
    DownloadError,
    QuotaError,
    RateLimited,
    ServiceError,
    StorageError,
    TransportError,
    UsageError,
    WayRefused,
)
from .files import state_dir, write_failure
from .ledger import ErrorRecord, Ledger, error_record
from .limits import Throttle
from .manifest import Item
from .names import Names
from .plan import Plan
from .polls import PollScheduler
from .progress import Reporter
from .submit import Counters, Stopped, Submitter

DOWNLOAD_SLOTS = 8  # result files fetched at once
SHUTDOWN_MARGIN = 5.0  # beyond Timeouts.create, for the ledger's fsync after the last answer
NO_RESULT_QUERIES = 3  # a success without result URLs: recordInfo asked this many times before "no result"
LOST_AFTER = 24 * 3600.0  # seconds: an unknown task older than this was forgotten by the service (it keeps
#                           task records for weeks, not forever); a younger one may just not be visible yet


class Engine:
    def __init__(
        self,
        settings: RunSettings,
        items: list[Item],
        plan: Plan,
        ledger: Ledger,
        client: Client,
        reporter: Reporter,
        *,
        callback_url: str | None = None,
        stems: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.items = items
        self.plan = plan
        self.ledger = ledger
        self.client = client
        self.reporter = reporter
        self.counters = Counters()
        # What earlier runs learned about this service (none with --simulate): where the limits start.
        # Capacity and latency are the model's: the run's is the one most of its items use.
        models = Counter(item.model for item, _ in plan.resume) + Counter(item.model for item in plan.submit)
        self.model = models.most_common(1)[0][0] if models else (items[0].model if items else "")
        self._memory_dir, self.remembered = memory.recall(settings, self.model, reporter)
        self.throttle = Throttle(
            concurrency=settings.concurrency,
            create_rate=settings.create_rate,
            poll_rate=settings.poll_rate,
            retry=settings.retry,
            hints=self.remembered.hints(settings.create_rate, settings.concurrency) if self.remembered else None,
        )
        self.limiter = self.throttle.limiter  # the in-flight slots, taken and given back by every item
        self._dispatched = False  # every item of the plan has its slot: the run is in its tail once none waits
        self.polls = PollScheduler(
            self.throttle,
            settings.poll,
            prior=self.remembered.prior(settings.task_timeout) if self.remembered else None,
            in_tail=self._detection_counts,
        )
        self.downloads = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self.rng = random.Random()
        self.temp_dir = state_dir(settings.out, "tmp")
        self.ids = [item.id for item in items]
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None
        self.fatal: BatchgenError | None = None
        self._work: asyncio.Task[None] | None = None
        self.submitter = Submitter(
            settings,
            ledger,
            client,
            self.throttle,
            reporter,
            self.counters,
            callback_url=callback_url,
            fail=self._fail,
            stop=self.stop,
            stopping=lambda: self.stop_reason is not None,
            more_to_create=lambda: not self._dispatched,
        )
        self.poll_refusals = Refusals()  # 401/403 on recordInfo: the run's, or one query's (see access.py)
        self._service_created: dict[str, float] = {}  # task id -> the service's createTime (Unix s), once seen
        self.names = Names(
            self.ids,
            ((i, r.get("files") or ()) for i, r in ledger.owners() if r.get("state") == "succeeded"),
            template=settings.name,
            stems=stems,
        )
        self._deadline = time.monotonic() + settings.max_runtime if settings.max_runtime else None

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        """Do the plan; returns when every item is done, or the run was stopped (see `stop_reason`)."""
        download.cleanup_partials(self.temp_dir)
        self.reporter.start(len(self.items))
        self._work = asyncio.create_task(self._main())
        if self.stop_reason is not None:  # stopped (a signal) while the run was being set up: do nothing
            self._work.cancel()
        try:
            await self._work
        except asyncio.CancelledError:
            if not (self._work.cancelled() and self.stop_reason is not None):
                raise  # we were cancelled from outside, not stopped
        finally:
            if creating := self.submitter.creating:  # calls already sent: record their task ids before closing
                if not isinstance(self.fatal, WayRefused):  # a way refused sent nothing: those calls end at once
                    self.reporter.warning(
                        f"waiting up to {self.settings.timeouts.create:g} s for {len(creating)} createTask "
                        "call(s) already sent (they may be paid); signal again to stop now"
                    )
                await asyncio.wait(creating, timeout=self.settings.timeouts.create + SHUTDOWN_MARGIN)
                self.submitter.abandon()  # past the bound: given up, in doubt, and recorded so before closing
                await asyncio.gather(*creating, return_exceptions=True)
            self._show_progress()
            if self._memory_dir is not None:
                memory.keep(
                    self._memory_dir,
                    settings=self.settings,
                    model=self.model,
                    before=self.remembered,
                    throttle=self.throttle,
                    polls=self.polls,
                    reporter=self.reporter,
                )

    def _detection_counts(self) -> bool:
        """Whether a task found late costs time now: no item waits for the create window (which would set the
        pace) and none is being created, and either every item has its slot (the run's tail) or items wait for an
        in-flight slot (the service is full: a slot is refilled only once its task is seen finished)."""
        if self.throttle.window.waiting or self.submitter.creating:
            return False
        return self._dispatched or self.limiter.waiting > 0

    def _show_progress(self) -> None:
        self.reporter.update(self.ledger.counts(self.ids), in_flight=self.limiter.in_flight, limit=self.limiter.limit)

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as group:
            ticker = group.create_task(self._tick())
            poller = group.create_task(self.polls.run())
            async with asyncio.TaskGroup() as work:
                await self._dispatch(work)
                self._dispatched = True
            ticker.cancel()
            poller.cancel()

    def stop(self, reason: str, *, signum: int | None = None, fatal: BatchgenError | None = None) -> None:
        """Stop the run now: nothing more is submitted; what is in flight stays resumable by its task id."""
        if self.stop_reason is not None or (self._work is not None and self._work.done()):
            if signum is not None:  # a signal while stopping already: now, even inside createTask calls
                self.submitter.abandon()
                if self._work is not None:
                    self._work.cancel()
            if self.stop_reason is not None:
                return
        self.stop_reason = reason
        self.stop_signal = signum
        self.fatal = fatal
        if self._work is not None:
            self._work.cancel()

    async def _dispatch(self, work: asyncio.TaskGroup) -> None:
        queue: list[tuple[Item, str | None]] = [*self.plan.resume, *((i, None) for i in self.plan.submit)]
        for item, task_id in queue:
            left = self.submitter.creates_left
            if task_id is None and left is not None and left <= 0:
                break  # --limit: the rest stay pending for the next run
            if task_id is not None and not self.submitter.claim(task_id, item.id):
                await self._fail(item.id, self.submitter.duplicate(task_id))  # two items, one task
                continue
            await self.limiter.acquire()
            work.create_task(self._item(item, task_id))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.ledger.maybe_snapshot()
            self._show_progress()
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.reporter.warning(
                    f"--max-runtime {self.settings.max_runtime:g} s reached: stopping; rerun to continue"
                )
                self.stop("max-runtime")

    # ------------------------------------------------------------ one item

    async def _item(self, item: Item, task_id: str | None) -> None:
        holding = True
        first_poll: float | None = 0.0 if task_id is not None else None  # a resumed task: ask at once

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self.limiter.release()

        try:
            while True:
                if task_id is None:
                    task_id = await self.submitter.submit(item)
                    if task_id is None:
                        return
                record = await self._wait(item, task_id, first_poll)
                first_poll = None
                if record is None:
                    return  # --task-timeout: stays submitted, resumable with its task id
                release()
                if record.unknown:  # _wait returns an unknown task only once it is lost
                    self.counters.lost += 1
                    await self._fail(item.id, self._lost_error(task_id))
                    return
                if record.state == "success":
                    await self._download(item, task_id, record)
                    return
                kind = failures.classify(record.fail_code, record.fail_message)
                error = error_record(
                    kind,
                    record.fail_code,
                    record.fail_message or f"the task failed (failCode {record.fail_code})",
                )
                attempts = self.ledger.record(item.id).get("attempts", 0)
                if kind == "task_transient" and attempts < self.settings.max_attempts:
                    self.counters.retries += 1
                    self.reporter.info(
                        f"item {item.id!r}: task {task_id} failed ({_brief(error)}); submitting again "
                        f"(attempt {attempts + 1} of {self.settings.max_attempts})",
                        item=item.id,
                    )
                    self.ledger.requeue(item.id, error)
                    await self.ledger.durable()
                    task_id = None
                    await self.limiter.acquire()
                    holding = True
                    continue
                await self._fail(item.id, error)
                return
        except Stopped:
            return
        except WayRefused as exc:  # a result host refusing us: no new creates; paid tasks stay resumable
            self.stop("refused", fatal=exc)
        except (StorageError, OSError) as exc:
            fatal = exc if isinstance(exc, StorageError) else write_failure(self.settings.out, item.id, exc)
            self.stop("storage", fatal=fatal)
        finally:
            release()

    async def _fail(self, item_id: str, error: ErrorRecord) -> None:
        """The item failed for good: record it, durably, then say so with what to do."""
        self.ledger.failed(item_id, error)
        await self.ledger.durable()
        attempts = self.ledger.record(item_id).get("attempts", 0)
        if error["kind"] in ("rejected", "task_invalid"):  # the same request would be refused again
            hint = "fix the item in the manifest; a changed item is submitted again"
        elif error["kind"] == "task_policy":
            hint = "change the prompt to generate it"
        else:
            hint = "rerun with --retry-failed to try again"
        after = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        self.reporter.warning(f"item {item_id!r} failed{after} ({_brief(error)}); {hint}", item=item_id, error=error)

    def _lost_error(self, task_id: str) -> ErrorRecord:
        return error_record(
            "lost",
            None,
            f"the service no longer knows task {task_id}, created over {LOST_AFTER / 3600:g} h ago; "
            "a new submission is paid again",
        )

    # ------------------------------------------------------------ poll

    async def _wait(self, item: Item, task_id: str, first_poll: float | None) -> TaskRecord | None:
        """Poll until the task is finished, when the poll scheduler says; None after --task-timeout.

        `first_poll` is not None for a task resumed from an earlier run: its age is unknown, so it is asked at
        once. A task whose callback comes to this run's listener is polled only as the fallback.
        """
        deadline = time.monotonic() + self.settings.task_timeout
        fallback = bool(self.submitter.callback_url and not item.callback_url)
        self.polls.add(task_id, fallback=fallback, resumed=first_poll is not None)
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
                self.polls.observe(task_id, record.finished, record.created, record.completed)
                if record.finished or self._lost(item, task_id, record):
                    return record
        finally:
            self.limiter.ended()  # the one count of tasks in flight, the limiter's: this one left it
            self.polls.remove(task_id)

    def wake(self, task_id: str) -> None:
        """A callback says this task may be finished: ask recordInfo now rather than at the next poll."""
        if self.polls.wake(task_id):
            self.counters.callbacks += 1

    async def _query(self, task_id: str) -> TaskRecord | None:
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
                self.stop("refused", fatal=exc)
                raise Stopped from exc
            self.reporter.debug(f"recordInfo {task_id}: refused ({exc}) while other queries succeed; asking later")
        except (UsageError, WayRefused) as exc:
            self.stop("refused", fatal=exc)
            raise Stopped from exc
        except (ServiceError, TransportError) as exc:
            self.reporter.debug(f"recordInfo {task_id}: {exc}; asking again later")
        return None

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
        submitted = self.ledger.record(item.id).get("submitted_at")
        if submitted:
            with contextlib.suppress(ValueError):
                created.append(calendar.timegm(time.strptime(submitted, "%Y-%m-%dT%H:%M:%SZ")))
        return bool(created) and time.time() - min(created) > LOST_AFTER

    # ------------------------------------------------------------ download

    async def _download(self, item: Item, task_id: str, record: TaskRecord) -> None:
        """Fetch every result file; expired URLs are refreshed with one recordInfo each time.

        A URL that carries the key is never fetched, and a malformed one fails the item (`bad_result`); a result
        host that cannot be reached through every try fails it too, rather than every night again.
        """
        if record.key_in_url:
            await self._fail(item.id, _key_in_url(record))
            return
        async with self.downloads:
            last: DownloadError | None = None
            queries = 0
            for attempt in range(1, self.settings.retry.calls + 1):
                if not record.result_urls:
                    queries += 1
                    if queries >= NO_RESULT_QUERIES:  # the service has no result to give
                        reason = record.result_error or "it gave no result URLs"
                        await self._fail(item.id, error_record("no_result", None, f"the task succeeded but {reason}"))
                        return
                    await asyncio.sleep(self.settings.retry.delay(attempt, self.rng.random()))
                    record = _fresher(await self._query(task_id), record)
                    continue
                try:  # a result host whose certificate or proxy refuses us stops the run (WayRefused)
                    rolls.keep_earlier(self.settings.out, self.ledger.record(item.id))  # a re-roll: keep the last
                    names, digests, received = await download.fetch_all(
                        self.client,
                        item,
                        task_id,
                        record,
                        stems=self.names.stems(item.id, len(record.result_urls)),
                        settings=self.settings,
                        temp_dir=self.temp_dir,
                        warn=lambda message: self.reporter.warning(message, item=item.id),
                    )
                except DownloadError as exc:
                    last = exc
                    self.reporter.debug(f"item {item.id!r}: {exc}")
                    if exc.permanent:
                        await self._fail(item.id, error_record("bad_result", None, str(exc)))
                        return
                    if exc.expired or exc.unreachable:
                        fresh = await self._refresh(item, task_id, record, exc)
                        if fresh is None:
                            return
                        if fresh.key_in_url:
                            await self._fail(item.id, _key_in_url(fresh))
                            return
                        if fresh.result_urls != record.result_urls and fresh.result_urls:
                            record = fresh  # signed URLs expire: these are new ones
                            continue
                    await asyncio.sleep(self.settings.retry.delay(attempt, self.rng.random()))
                    continue
                # The old files (and ledger.refetch's) go before the success is recorded: a kill in between leaves
                # the ledger naming them still, so the next run removes what is left, never keeps it for ever.
                known = self.ledger.record(item.id)
                old = [*(known.get("files") or []), *(known.get("files_before") or [])]
                stale = [n for n in old if not self.names.held_by_other(item.id, n)]
                await asyncio.to_thread(download.remove_stale, self.settings.out, stale, names)
                self.ledger.succeeded(
                    item.id,
                    names,
                    digests,
                    cost=dict(record.cost),
                    received=received if self.settings.metadata != "none" else None,
                )
                self.names.credit(item.id, names)
                await self.ledger.durable()
                self.counters.downloads += len(names)
                return
            if last is not None and last.unreachable:
                await self._fail(
                    item.id,
                    error_record(
                        "bad_result", None, f"{last} (after {self.settings.retry.calls} tries with fresh URLs)"
                    ),
                )
                return
            self.reporter.warning(
                f"item {item.id!r}: could not download the result of {task_id} ({last or 'no attempt'}); it "
                "stays submitted, rerun to try again",
                item=item.id,
            )

    async def _refresh(self, item: Item, task_id: str, record: TaskRecord, exc: DownloadError) -> TaskRecord | None:
        """One recordInfo for fresh result URLs after `exc`; None when none can come: the URL was refused (expired)
        and the service no longer knows the task. Retrying that URL with backoff only held the run for minutes
        (the soak's hang, seed 2026 night 62): the item stays submitted, for the next run."""
        answer = await self._query(task_id)
        if exc.expired and answer is not None and answer.unknown:
            self.reporter.warning(
                f"item {item.id!r}: the result URL of {task_id} was refused ({exc}) and the service no longer "
                "knows the task, so it gives no fresh URL; it stays submitted, rerun to pick it up",
                item=item.id,
            )
            return None
        return _fresher(answer, record)


def _key_in_url(record: TaskRecord) -> ErrorRecord:
    """A result URL carries the API key: never fetched (that would send the key to the result host)."""
    urls = ", ".join(record.result_urls)[:300]  # masked already, by the client
    return error_record("bad_result", None, f"a result URL carries the API key; not fetched: {urls}")


def _fresher(fresh: TaskRecord | None, record: TaskRecord) -> TaskRecord:
    """A new recordInfo answer, if it says something about a finished task; else what we had."""
    return fresh if fresh is not None and fresh.finished else record


def _brief(error: ErrorRecord) -> str:
    code = f"{error.get('code')}: " if error.get("code") else ""
    return f"{code}{error.get('message')}"
