"""The run: submit, poll and download every item of a plan under shared limits, recording each step.

One coroutine per item in flight, created only once the in-flight limiter gave it a slot (so a 100,000-item
manifest never holds 100,000 tasks), all owned by one TaskGroup. An item's life:

    pending --start_submit--> (createTask) --submitted--> (poll recordInfo) --> success --> download --> succeeded
                                                                          \\--> fail: transient -> pending again
                                                                                     otherwise -> failed

The slot is released when the task is finished at the service (success or fail), before the download, so the
service's capacity, not our disk, paces the work. A stop (signal, --max-runtime, a refused key) cancels the
work at once; a createTask call already under way is shielded and its task id recorded before the ledger
closes, so only SIGKILL can leave a submission in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from . import download, failures, manifest
from .callbacks import CallbackReceiver, parse_listen
from .client import Client, TaskRecord, open_session
from .config import PollSchedule, RunSettings, Secret
from .errors import (
    AuthError,
    BatchgenError,
    DownloadError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServiceError,
    StorageError,
    TransportError,
    UsageError,
)
from .ledger import Ledger, error_record, load, state_dir
from .ledger import exists as ledger_exists
from .limits import Cooldown, InFlightLimiter, RateWindow, TokenBucket
from .manifest import Item
from .plan import Plan, describe, make_plan
from .progress import Reporter

SATURATION_ATTEMPTS = 40  # 429s in a row for one item before it is left pending for the next run
DOWNLOAD_SLOTS = 8  # result files fetched at once
SHUTDOWN_GRACE = 3.0  # seconds a stopping run waits for createTask calls already sent
CALLBACK_POLL_FACTOR = 4.0  # with callbacks on, polling is the fallback and runs this much slower


@dataclass(slots=True)
class Counters:
    creates: int = 0  # paid
    retries: int = 0
    rate_limited: int = 0
    polls: int = 0
    downloads: int = 0
    in_doubt: int = 0
    callbacks: int = 0  # valid callbacks that woke a poller


@dataclass(slots=True)
class Outcome:
    exit_code: int
    counts: dict[str, int]
    counters: Counters
    seconds: float


def exit_code(counts: dict[str, int], fatal: BatchgenError | None = None, signum: int | None = None) -> int:
    """SPEC's exit code, most severe first: 3 (key/quota) or the fatal error's own, 128+N, 5, 1, 0."""
    if fatal is not None:
        return fatal.exit_code
    if signum is not None:
        return 128 + signum
    if counts["pending"] or counts["submitted"]:
        return 5
    return 1 if counts["failed"] else 0


class Stopped(Exception):
    """Internal: the run is stopping; unwinds an item's coroutine without changing its state."""


class Engine:
    def __init__(
        self, settings: RunSettings, items: list[Item], plan: Plan, ledger: Ledger, client: Client, reporter: Reporter
    ) -> None:
        self.s = settings
        self.items = items
        self.plan = plan
        self.ledger = ledger
        self.client = client
        self.out = reporter
        self.counters = Counters()
        self.limiter = InFlightLimiter(settings.concurrency)
        self.window = RateWindow(*settings.create_rate)
        self.polls = TokenBucket(settings.poll_rate)
        self.cooldown = Cooldown(settings.retry.wait_initial, settings.retry.wait_max)
        self.live = 0  # tasks created at the service and not yet seen finished
        self._epoch = 0  # bumped each time a 429 slows us down; a call remembers the epoch it was sent in
        self._strikes = 0  # 429 signals since the last success
        self.downloads = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self.rng = random.Random()
        self.temp_dir = state_dir(settings.out, "tmp")
        self.ids = [item.id for item in items]
        self.creates_left = settings.limit
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None
        self.fatal: BatchgenError | None = None
        self._work: asyncio.Task[None] | None = None
        self._creating: set[asyncio.Task[str]] = set()
        self._wakeups: dict[str, asyncio.Event] = {}  # task id -> its poller's alarm, rung by a callback
        self.callback_url = settings.callback_url
        self._deadline = time.monotonic() + settings.max_runtime if settings.max_runtime else None

    # ------------------------------------------------------------ the run

    async def run(self) -> None:
        """Do the plan; returns when every item is done, or the run was stopped (see `stop_reason`)."""
        download.cleanup_partials(self.temp_dir)
        self.out.start(len(self.items))
        self._work = asyncio.create_task(self._main())
        try:
            await self._work
        except asyncio.CancelledError:
            if not (self._work.cancelled() and self.stop_reason is not None):
                raise  # we were cancelled from outside, not stopped
        finally:
            if self._creating:  # createTask calls already sent: record their task ids before the ledger closes
                await asyncio.wait(self._creating, timeout=SHUTDOWN_GRACE)
            self._show_progress()

    def _show_progress(self) -> None:
        self.out.update(self.ledger.counts(self.ids), in_flight=self.limiter.in_flight, limit=self.limiter.limit)

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as group:
            ticker = group.create_task(self._tick())
            async with asyncio.TaskGroup() as work:
                await self._dispatch(work)
            ticker.cancel()

    def stop(self, reason: str, *, signum: int | None = None, fatal: BatchgenError | None = None) -> None:
        """Stop the run now: nothing more is submitted; what is in flight stays resumable by its task id."""
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
            if task_id is None and self.creates_left is not None and self.creates_left <= 0:
                break  # --limit: the rest stay pending for the next run
            await self.limiter.acquire()
            work.create_task(self._item(item, task_id))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.ledger.maybe_snapshot()
            self._show_progress()
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.out.warning(f"--max-runtime {self.s.max_runtime:g} s reached: stopping; rerun to continue")
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
                    task_id = await self._submit(item)
                    if task_id is None:
                        return
                record = await self._wait(item, task_id, first_poll)
                first_poll = None
                if record is None:
                    return  # --task-timeout: stays submitted, resumable with its task id
                release()
                if record.state == "success":
                    await self._download(item, task_id, record)
                    return
                kind = failures.classify(record.fail_code, record.fail_message)
                error = error_record(
                    f"task_{kind}",
                    record.fail_code,
                    record.fail_message or f"the task failed (failCode {record.fail_code})",
                )
                attempts = int(self.ledger.items[item.id].get("attempts", 0))
                if kind == "transient" and attempts < self.s.max_attempts:
                    self.counters.retries += 1
                    self.out.info(
                        f"item {item.id!r}: task {task_id} failed ({_brief(error)}); submitting again "
                        f"(attempt {attempts + 1} of {self.s.max_attempts})",
                        item=item.id,
                    )
                    self.ledger.requeue(item.id, error)
                    await self.ledger.durable()
                    task_id = None
                    await self.limiter.acquire()
                    holding = True
                    continue
                self.ledger.failed(item.id, error)
                await self.ledger.durable()
                self._report_failure(item.id, error, attempts)
                return
        except Stopped:
            return
        except (StorageError, OSError) as exc:
            problem = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(
                    f"cannot write in {self.s.out}: {exc.strerror or exc}; the ledger is intact: free some space and "
                    "rerun to continue"
                )
            )
            self.stop("storage", fatal=problem)
        finally:
            release()

    def _report_failure(self, item_id: str, error: dict[str, Any], attempts: int) -> None:
        hint = (
            "rerun with --retry-failed to try again"
            if error["kind"] != "task_policy"
            else "change the prompt to generate it"
        )
        after = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        self.out.warning(f"item {item_id!r} failed{after} ({_brief(error)}); {hint}", item=item_id, error=error)

    # ------------------------------------------------------------ submit

    async def _submit(self, item: Item) -> str | None:
        """createTask with retries; the task id, or None if the item failed or must wait for the next run."""
        request = item.request
        callback = item.callback_url or self.callback_url
        saturated = failed = 0
        while True:
            await self.cooldown.wait()
            slot = await self.window.acquire()
            epoch = self._epoch
            if self.creates_left is not None:
                if self.creates_left <= 0:
                    self.window.forget(slot)
                    return None
                self.creates_left -= 1
            job = asyncio.ensure_future(self._create(item, request, callback, slot))
            self._creating.add(job)
            job.add_done_callback(self._creating.discard)
            try:
                return await asyncio.shield(job)
            except RateLimited as exc:
                self._give_back()
                self._saturated(exc, epoch)
                saturated += 1
                if saturated >= SATURATION_ATTEMPTS:
                    self.out.warning(f"item {item.id!r}: the service stayed saturated (429); left for the next run")
                    return None
            except (AuthError, QuotaError, UsageError) as exc:
                self._give_back()
                self.stop("refused", fatal=exc)
                raise Stopped from exc
            except RequestRejected as exc:
                self._give_back()
                error = error_record("rejected", exc.code, exc.message)
                self.ledger.failed(item.id, error)
                await self.ledger.durable()
                self._report_failure(item.id, error, 0)
                return None
            except (ServiceError, TransportError) as exc:
                if not (isinstance(exc, TransportError) and exc.sent):
                    self._give_back()
                failed += 1
                if failed >= self.s.retry.attempts:
                    self.out.warning(f"item {item.id!r}: createTask kept failing ({exc}); left for the next run")
                    return None
                delay = self.s.retry.delay(failed, self.rng.random())
                self.out.debug(f"item {item.id!r}: createTask failed ({exc}); retrying in {delay:.1f} s")
                await asyncio.sleep(delay)

    def _give_back(self) -> None:
        if self.creates_left is not None:
            self.creates_left += 1

    async def _create(self, item: Item, request: dict[str, Any], callback: str | None, slot: list[float]) -> str:
        """One createTask call, bracketed by the ledger: intent before, the task id (fsync'd) after.

        Its create-window slot counts from the moment the answer arrives, unless the service dropped the call.
        """
        try:
            self.ledger.start_submit(item.id, request)
            await self.ledger.durable()  # the intent is on disk before the request leaves
            task_id = await self.client.create_task(request, callback)
        except RateLimited:
            self.window.forget(slot)
            self.ledger.submit_unsent(item.id)
            raise
        except TransportError as exc:
            self.window.done(slot)
            self.ledger.submit_unsent(item.id, in_doubt=exc.sent)
            await self.ledger.durable()
            if exc.sent:
                self.counters.in_doubt += 1
                self.out.warning(
                    f"item {item.id!r}: createTask got no answer ({exc}); it may have been created "
                    "and will be submitted again (marked in doubt)",
                    item=item.id,
                )
            raise
        except BaseException:
            self.window.done(slot)
            self.ledger.submit_unsent(item.id)
            raise
        self.window.done(slot)
        self.counters.creates += 1  # paid, whatever happens next
        self.ledger.submitted(item.id, task_id)
        self.live += 1  # the service is running it from now on, though we wait for the disk before polling
        try:
            await self.ledger.durable()  # the task id is on disk before anything else happens to it
        finally:
            self.live -= 1
        self._strikes = 0
        self.cooldown.clear()
        self.window.on_success()
        self.limiter.on_success()
        self.out.debug(f"item {item.id!r}: submitted as {task_id}", item=item.id, task_id=task_id)
        return task_id

    def _saturated(self, exc: RateLimited, epoch: int) -> None:
        """A 429 slows everyone down at once: one signal per burst, however many calls of the burst see it.

        First the shared limits learn what the service took (the in-flight limit drops to the tasks it is
        running for us, the create window to what it accepted in the last window). Only when 429s go on after
        that — no success in between — does everyone also pause, for an exponential, jittered cool-down (or the
        server's Retry-After, always honoured).
        """
        self.counters.rate_limited += 1
        if epoch < self._epoch and exc.retry_after is None:
            return  # sent before we last slowed down: this 429 has been answered already
        self._epoch += 1
        self._strikes += 1
        self.limiter.on_saturated(self.live)
        self.window.on_saturated()
        delay = 0.0
        if self._strikes > 1 or exc.retry_after is not None:
            delay = self.cooldown.trigger(exc.retry_after)
        self.out.debug(
            f"service saturated (429): in-flight limit {self.limiter.limit}, create window "
            f"{self.window.count}/{self.window.seconds:g} s, pause {delay:.1f} s"
        )

    # ------------------------------------------------------------ poll

    async def _wait(self, item: Item, task_id: str, first_poll: float | None) -> TaskRecord | None:
        """Poll until the task is finished, on the age-based schedule; None after --task-timeout."""
        started = time.monotonic()
        deadline = started + self.s.task_timeout
        schedule: PollSchedule = self.s.poll
        # With callbacks on, polling is only the fallback: CALLBACK_POLL_FACTOR times less often.
        slower = CALLBACK_POLL_FACTOR if self.callback_url and not item.callback_url else 1.0
        delay = schedule.interval(0) * slower if first_poll is None else first_poll
        alarm = self._wakeups.setdefault(task_id, asyncio.Event())
        self.live += 1
        try:
            while True:
                if time.monotonic() + delay >= deadline:
                    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                    self.out.warning(
                        f"item {item.id!r}: task {task_id} not finished after --task-timeout "
                        f"{self.s.task_timeout:g} s; it stays submitted, rerun to pick it up",
                        item=item.id,
                    )
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(alarm.wait(), delay)  # a callback cuts the wait short
                alarm.clear()
                delay = schedule.interval(time.monotonic() - started) * slower
                record = await self._query(task_id)
                if record is not None and record.finished:
                    return record
        finally:
            self.live -= 1
            self._wakeups.pop(task_id, None)

    def wake(self, task_id: str) -> None:
        """A callback says this task may be finished: ask recordInfo now rather than at the next poll."""
        alarm = self._wakeups.get(task_id)
        if alarm is not None:
            self.counters.callbacks += 1
            alarm.set()

    async def _query(self, task_id: str) -> TaskRecord | None:
        """One recordInfo under the shared budget; None when there is no answer worth acting on yet."""
        await self.cooldown.wait()
        await self.polls.acquire()
        self.counters.polls += 1
        try:
            record = await self.client.record_info(task_id)
            self.polls.on_success()
            return record
        except RateLimited:
            # Status queries have their own budget at the service: a 429 here slows the queries, not the work.
            self.counters.rate_limited += 1
            self.polls.on_saturated()
            self.out.debug(f"recordInfo {task_id}: 429; status queries now {self.polls.rate:g}/s")
        except (AuthError, QuotaError, UsageError) as exc:
            self.stop("refused", fatal=exc)
            raise Stopped from exc
        except (ServiceError, TransportError) as exc:
            self.out.debug(f"recordInfo {task_id}: {exc}; asking again later")
        return None

    # ------------------------------------------------------------ download

    async def _download(self, item: Item, task_id: str, record: TaskRecord) -> None:
        """Fetch every result file; expired URLs are refreshed with one recordInfo each time."""
        async with self.downloads:
            last = "no attempt"
            for attempt in range(1, self.s.retry.attempts + 1):
                if not record.result_urls:
                    if attempt >= 3:  # asked three times: the service has no result to give
                        reason = record.result_error or "it gave no result URLs"
                        error = error_record("no_result", None, f"the task succeeded but {reason}")
                        self.ledger.failed(item.id, error)
                        await self.ledger.durable()
                        self._report_failure(item.id, error, 0)
                        return
                    await asyncio.sleep(self.s.retry.delay(attempt, self.rng.random()))
                    record = await self._query(task_id) or record
                    continue
                try:
                    names, digests = await self._fetch_all(item, record.result_urls)
                except DownloadError as exc:
                    last = str(exc)
                    self.out.debug(f"item {item.id!r}: {exc}")
                    if exc.permanent:
                        error = error_record("bad_result", None, str(exc))
                        self.ledger.failed(item.id, error)
                        await self.ledger.durable()
                        self._report_failure(item.id, error, 0)
                        return
                    if exc.expired and (fresh := await self._query(task_id)) is not None and fresh.result_urls:
                        record = fresh  # signed URLs expire: these are new ones
                        continue
                    await asyncio.sleep(self.s.retry.delay(attempt, self.rng.random()))
                    continue
                old = list(self.ledger.items[item.id].get("files") or [])
                self.ledger.succeeded(item.id, names, digests)
                await self.ledger.durable()
                download.remove_stale(self.s.out, old, names)
                self.counters.downloads += len(names)
                return
            self.out.warning(
                f"item {item.id!r}: could not download the result of {task_id} ({last}); it stays "
                "submitted, rerun to try again",
                item=item.id,
            )

    async def _fetch_all(self, item: Item, urls: tuple[str, ...]) -> tuple[list[str], list[str]]:
        names: list[str] = []
        digests: list[str] = []
        for n, url in enumerate(urls, start=1):
            stem = item.id if len(urls) == 1 else f"{item.id}_{n}"
            name, digest = await download.fetch(
                self.client,
                url,
                directory=self.s.out,
                temp_dir=self.temp_dir,
                stem=stem,
                max_bytes=self.s.max_image_bytes,
            )
            names.append(name)
            digests.append(digest)
        return names, digests

    # ------------------------------------------------------------ the outcome

    def outcome(self, seconds: float) -> Outcome:
        counts = self.ledger.counts(self.ids)
        return Outcome(exit_code(counts, self.fatal, self.stop_signal), counts, self.counters, seconds)


def _brief(error: dict[str, Any]) -> str:
    code = f"{error.get('code')}: " if error.get("code") else ""
    return f"{code}{error.get('message')}"


# ---------------------------------------------------------------- entry points


def dry_run(settings: RunSettings, reporter: Reporter) -> int:
    """Validate, compare with the ledger, print what a run would do; contact nothing, write nothing."""
    with _bulk():
        items = manifest.load(settings.manifest)
        loaded = load(settings.out) if ledger_exists(settings.out) else None
    records = loaded.items if loaded else {}
    plan = make_plan(items, records, retry_failed=settings.retry_failed)
    if loaded and loaded.manifest not in (None, settings.manifest.name) and not settings.adopt_ledger:
        print(f"  note: {settings.out}/results.json was made for {loaded.manifest!r}: a run needs --adopt-ledger")
    if loaded and loaded.damaged:
        print(f"  note: {loaded.damaged}; a run will rebuild it from the journal")
    print("\n".join(describe(plan, settings)))
    return 0


async def run(settings: RunSettings, reporter: Reporter) -> Outcome:
    """The main job. Raises ManifestError/UsageError (exit 2) or LockedError (exit 4) before any request."""
    started = time.monotonic()
    with _bulk():
        items = manifest.load(settings.manifest)
        ledger = Ledger.open(settings.out, settings.manifest.name, adopt=settings.adopt_ledger)
    outcome: Outcome | None = None
    try:
        if ledger.recovered:
            reporter.warning(
                f"{ledger.recovered}: rebuilt it from the previous snapshot and the journal; the "
                "damaged file is kept beside it as results.json.damaged-*"
            )
        plan = make_plan(items, ledger.items, retry_failed=settings.retry_failed)
        ledger.track(items)
        _announce(plan, items, settings, reporter)
        if not plan.submit and not plan.resume:  # nothing to do: contact nothing, need no key
            counts = ledger.counts(ledger.manifest_ids)
            outcome = Outcome(exit_code(counts), counts, Counters(), time.monotonic() - started)
            return outcome
        async with _service(settings, reporter) as (api_base, key), open_session(settings.timeouts) as session:
            engine = Engine(settings, items, plan, ledger, Client(session, api_base, key, settings.timeouts), reporter)
            async with _callbacks(settings, engine, reporter):
                with _signals(engine):
                    await engine.run()
        reporter.close()
        outcome = engine.outcome(time.monotonic() - started)
        if engine.fatal is not None:
            reporter.error(f"{engine.fatal}; run stopped, state saved")
        return outcome
    finally:
        try:
            ledger.close()
        except StorageError as exc:  # the journal still holds what the snapshot could not: nothing is lost
            if outcome is None:
                raise
            reporter.error(str(exc))
            if outcome.exit_code in (0, 1):
                outcome.exit_code = StorageError.exit_code


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """Pause the cyclic garbage collector while loading a manifest and a ledger: 100,000 items make millions
    of small acyclic objects, and the collector's passes over them were 60% of the load time (1.9 s -> 0.8 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _announce(plan: Plan, items: list[Item], settings: RunSettings, reporter: Reporter) -> None:
    s = plan.summary()
    reporter.info(
        f"{settings.manifest.name}: {len(items)} items; {len(plan.submit)} to submit "
        f"({s['new']} new, {s['changed']} changed, {s['retry']} retried), {s['resume']} to resume, "
        f"{s['done']} done, {s['failed']} failed earlier",
        event="plan",
        **s,
    )
    for item in plan.in_doubt:
        reporter.warning(
            f"item {item.id!r}: an earlier createTask call was interrupted; it may have been paid "
            "(in doubt). It is submitted again.",
            item=item.id,
        )


@contextlib.asynccontextmanager
async def _service(settings: RunSettings, reporter: Reporter) -> AsyncIterator[tuple[str, Secret]]:
    """The API to talk to: the real one, or (--simulate) the built-in simulator on a free loopback port."""
    if not settings.simulate:
        if settings.api_key is None:
            raise UsageError("no API key: set BATCHGEN_API_KEY or pass --api-key-file PATH (or try --simulate)")
        yield settings.api_base, settings.api_key
        return
    from .sim import SimConfig, Simulator

    key = Secret(secrets.token_urlsafe(16))
    # Realistic but short: seconds instead of Imagen's 20-45 s, quarter-size images, the real rate limit.
    config = SimConfig(api_key=key.value, latency=3.0, jitter=1.0, image_scale=0.25)
    async with Simulator(config) as sim:
        reporter.info(f"--simulate: the built-in simulator answers at {sim.api_url}")
        yield sim.api_url, key


@contextlib.asynccontextmanager
async def _callbacks(settings: RunSettings, engine: Engine, reporter: Reporter) -> AsyncIterator[None]:
    """With --callback-listen, receive the service's callbacks for the run's duration; they wake pollers."""
    if not settings.callback_listen:
        yield
        return
    host, port = parse_listen(settings.callback_listen)
    if not settings.callback_url and not manifest.is_loopback(host):
        raise UsageError(
            "--callback-listen on an address other than loopback needs --callback-url: the public "
            "https:// URL that reaches this listener"
        )
    receiver = CallbackReceiver(host, port, engine.wake)
    try:
        await receiver.start()
    except OSError as exc:
        raise UsageError(f"--callback-listen {settings.callback_listen}: {exc.strerror or exc}") from exc
    try:
        engine.callback_url = receiver.url_for(settings.callback_url)
        reporter.info(f"receiving callbacks on {host}:{receiver.port} (polling continues as the fallback)")
        yield
    finally:
        await receiver.close()


@contextlib.contextmanager
def _signals(engine: Engine) -> Any:
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(
            signum, functools.partial(engine.stop, f"signal {signal.Signals(signum).name}", signum=signum)
        )
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def figures(outcome: Outcome) -> dict[str, float]:
    """The run's figures for monitoring: the JSON summary line and the metrics file say the same."""
    n = outcome.counters
    return {
        "paid_creates": n.creates,
        "retries": n.retries,
        "rate_limited": n.rate_limited,
        "status_queries": n.polls,
        "callbacks": n.callbacks,
        "in_doubt": n.in_doubt,
        "seconds": round(outcome.seconds, 3),
        "exit_code": outcome.exit_code,
        "finished_timestamp": int(time.time()),
    }


def final_report(outcome: Outcome, settings: RunSettings, reporter: Reporter) -> None:
    c = outcome.counts
    n = outcome.counters
    reporter.summary(c, event="summary", **figures(outcome))
    if reporter.fmt == "text" and not reporter.quiet:
        reporter.info(
            f"{n.creates} paid creates, {n.retries} retries, {n.rate_limited}x 429, {n.polls} status "
            f"queries, {outcome.seconds:.1f} s; exit {outcome.exit_code}"
        )
    if outcome.exit_code == 5:
        reporter.info(
            f"incomplete: {c['pending']} pending, {c['submitted']} submitted; run the same command again to continue"
        )
