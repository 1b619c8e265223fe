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

The createTask side (money: paid and in-doubt creates, --limit; the ledger owns the task ids) is submit.py's
Submitter; the status side (the poll loop, recordInfo's answers, lost tasks) watch.py's Watcher; the download
with its retries download.py's Fetcher. What the run reports is counted in outcome.py's Counters.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping

from . import download, failures, memory, records
from .client import Client
from .config import RunSettings
from .errors import (
    BatchgenError,
    StorageError,
    WayRefused,
)
from .files import write_failure
from .ledger import ErrorRecord, Ledger, error_record
from .limits import Throttle
from .manifest import Item
from .names import Names
from .outcome import Counters
from .plan import Plan
from .polls import PollScheduler
from .progress import Reporter
from .submit import Stopped, Submitter
from .watch import Watcher, lost_error

SHUTDOWN_MARGIN = 5.0  # beyond Timeouts.create, for the ledger's fsync after the last answer


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
        self.throttle.young = self.polls.young  # what the 429 reading may count as surely running
        self.listed = ledger.listed()  # the manifest's ids, the ledger's answer: what the run counts
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
        self.watcher = Watcher(
            settings,
            client,
            self.polls,
            self.throttle,
            ledger,
            reporter,
            self.counters,
            callback_url=callback_url,
            stop=self.stop,
        )
        self.names = Names(
            self.listed,
            ((i, r["files"]) for i, r in ledger.owners() if r["state"] == "succeeded"),
            template=settings.name,
            stems=stems,
        )
        self.fetcher = download.Fetcher(
            settings, ledger, client, self.names, reporter, self.counters, fail=self._fail, query=self.watcher.query
        )
        self._deadline = time.monotonic() + settings.max_runtime if settings.max_runtime else None

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        """Do the plan; returns when every item is done, or the run was stopped (see `stop_reason`)."""
        download.cleanup_partials(self.fetcher.temp_dir)
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
            if self._memory_dir is None:
                memory.note_used(self.settings.out, None)  # --simulate: no service used, and `status` knows it
            else:
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
        self.reporter.update(
            self.ledger.counts(self.listed), in_flight=self.limiter.in_flight, limit=self.limiter.limit
        )

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
                record = await self.watcher.wait(item, task_id, first_poll, self.submitter.sent.pop(task_id, None))
                first_poll = None
                if record is None:
                    return  # --task-timeout: stays submitted, resumable with its task id
                release()
                if record.unknown:  # _wait returns an unknown task only once it is lost
                    self.counters.lost += 1
                    await self._fail(item.id, lost_error(task_id))
                    return
                if record.state == "success":
                    await self.fetcher.fetch(item, task_id, record)
                    return
                kind = failures.classify(record.fail_code, record.fail_message)
                error = error_record(
                    kind,
                    record.fail_code,
                    record.fail_message or f"the task failed (failCode {record.fail_code})",
                )
                attempts = self.ledger.record(item.id)["attempts"]
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

    def wake(self, task_id: str) -> None:
        """A callback says this task may be finished: ask recordInfo now rather than at the next poll."""
        self.watcher.wake(task_id)

    async def _fail(self, item_id: str, error: ErrorRecord) -> None:
        """The item failed for good: record it, durably, then say so with what to do."""
        self.ledger.failed(item_id, error)
        await self.ledger.durable()
        attempts = self.ledger.record(item_id)["attempts"]
        if error["kind"] in ("rejected", "task_invalid"):  # the same request would be refused again
            hint = "fix the item in the manifest; a changed item is submitted again"
        elif error["kind"] == "task_policy":
            hint = "change the prompt to generate it"
        else:
            hint = "rerun with --retry-failed to try again"
        after = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        self.reporter.warning(f"item {item_id!r} failed{after} ({_brief(error)}); {hint}", item=item_id, error=error)


def _brief(error: ErrorRecord) -> str:
    code = records.error_code(error)
    return f"{code}: {error['message']}" if code else error["message"]
