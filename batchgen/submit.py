"""The money side of an item's life: createTask under the throttle, bracketed by the ledger.

The intent is on disk before the request leaves, the task id (fsync'd) before anything else happens to it. An
answer that carries a taskId is a paid task; a create that got no answer, or a 5xx, after the request left may
have been paid: the item is marked in doubt, and --limit counts it. A taskId the service already gave another
item is a service error for the second item, never its success. A stop lets calls already sent finish (they
are shielded); a second signal abandons them, in doubt.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import gone
from .access import ACCOUNT_CODES, Refusals
from .answers import MAX_TASK_ID
from .client import Client
from .config import RunSettings
from .errors import (
    AuthError,
    ModelUnavailable,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServiceError,
    TransportError,
    UsageError,
    WayRefused,
)
from .ledger import ErrorRecord, Ledger, error_record
from .limits import Throttle
from .manifest import Item
from .models import builtin
from .outcome import Counters
from .prices import Budget
from .progress import Reporter
from .references import ReferenceChanged

SATURATION_ATTEMPTS = 40  # 429s in a row for one item before it is left pending for the next run

# Errors after which a createTask certainly created nothing: anything else after the request left may have.
NOT_CREATED = (RateLimited, RequestRejected, AuthError, QuotaError, UsageError, WayRefused)


class Stopped(Exception):
    """Internal: the run is stopping; unwinds an item's coroutine without changing its state."""


class Submitter:
    """createTask for the engine's items: retries, --limit, in-doubt marks, one owner per task id."""

    def __init__(
        self,
        settings: RunSettings,
        ledger: Ledger,
        client: Client,
        throttle: Throttle,
        reporter: Reporter,
        counters: Counters,
        *,
        callback_url: str | None,
        fail: Callable[[str, ErrorRecord], Awaitable[None]],
        stop: Callable[..., None],
        stopping: Callable[[], bool],
        more_to_create: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.client = client
        self.throttle = throttle
        self.reporter = reporter
        self.counters = counters
        self.callback_url = callback_url  # the run's callBackUrl (with --callback-listen, the receiver's)
        self._fail = fail
        self._stop = stop
        self._stopping = stopping
        self._more_to_create = more_to_create  # other items of the plan are still to be submitted in this run
        self.held: list[tuple[str, ErrorRecord]] = []  # refused before any create succeeded: decided by the next
        self.rng = random.Random()
        self.creates_left = settings.limit  # --limit: every possibly paid create counts
        self.creating: set[asyncio.Task[str]] = set()  # createTask calls under way (shielded from a stop)
        self.asking = 0  # of those, the ones whose request has left and whose answer has not come
        self.sent: dict[str, float] = {}  # task id -> when its createTask left (monotonic): taken by the watcher
        self._abandoned = False  # a second signal: createTask calls under way are given up (in doubt)
        self.refusals = Refusals()  # 401/403 on createTask: the run's, or one item's (a WAF refusing one prompt)
        self.gate = gone.Gate(gone.suspects(ledger.items.values()), settings.cards or builtin())
        self.budget = None
        if settings.max_spend is not None and settings.prices is not None:
            self.budget = Budget(settings.max_spend, settings.prices)

    def claim(self, task_id: str, item_id: str) -> bool:
        """Whether a resumed task id is this item's alone (two items, one task: never both succeed)."""
        return self.ledger.claim_task(task_id, item_id)

    def abandon(self) -> None:
        """Give up the createTask calls under way, now (a second signal): their items stay in doubt."""
        if not self._abandoned:
            self._abandoned = True
            for job in list(self.creating):
                job.cancel()

    def _unusable(self, task_id: str, item_id: str) -> ErrorRecord | None:
        """Why a task id the service answered cannot be this item's, or None: too long for any status query
        (checked first: such an id is never claimed), or already another item's."""
        if len(task_id) > MAX_TASK_ID:
            return error_record(
                "bad_task_id",
                None,
                f"the service answered a task id of {len(task_id):,} characters, too long to ask about: a service "
                "error (this item was paid for and not generated)",
            )
        return None if self.ledger.claim_task(task_id, item_id) else self.duplicate(task_id)

    def duplicate(self, task_id: str) -> ErrorRecord:
        owner = self.ledger.task_owner(task_id)
        return error_record(
            "duplicate_task",
            None,
            f"the service answered task id {task_id}, which is item {owner!r}'s: a service error "
            "(this item was not generated)",
        )

    async def submit(self, item: Item) -> str | None:
        """createTask with retries; the task id, or None if the item failed or must wait for the next run.
        An item whose model the service does not offer is not sent: it fails (gone.py)."""
        if not await self.gate.admit(item.model, id(item)):
            self.ledger.failed(item.id, self.gate.error(item.model))
            await self.ledger.durable()
            return None
        try:
            return await self._submit(item)
        finally:
            self.gate.settle(item.model, id(item))

    async def _submit(self, item: Item) -> str | None:
        request = item.request
        try:  # the body sent: local reference images as data URIs (the ledger keeps their sha256)
            body = await asyncio.to_thread(item.wire) if item.references else request
        except ReferenceChanged as exc:  # edited since the manifest was read: the next run sees a changed item
            await self._fail(item.id, error_record("rejected", None, str(exc)))
            return None
        callback = item.callback_url or self.callback_url
        saturated = failed = 0
        while True:
            await self.throttle.cooldown.wait()
            slot = await self.throttle.window.acquire()
            epoch = self.throttle.epoch
            if self.creates_left is not None:
                if self.creates_left <= 0:
                    self.throttle.window.forget(slot)
                    return None
                self.creates_left -= 1  # given back only when the call certainly created nothing
            if self.budget is not None and not self.budget.take(item.model):  # --max-spend: stop creating
                self.throttle.window.forget(slot)
                return None
            job = asyncio.ensure_future(self._create(item, request, callback, slot, body))
            self.creating.add(job)
            job.add_done_callback(_settle_job)
            job.add_done_callback(self.creating.discard)
            job.add_done_callback(functools.partial(self._free_slot, slot))
            try:
                task_id = await asyncio.shield(job)
                await self._fail_held()
                return task_id
            except _Taken:
                return None  # a duplicate task id: failed and reported
            except RateLimited as exc:
                self._give_back()
                if self._saturated(exc, epoch, slot):
                    await self.throttle.limiter.requeue()  # the service is full: wait for one of ours to finish
                saturated += 1
                if saturated >= SATURATION_ATTEMPTS:
                    self.reporter.warning(
                        f"item {item.id!r}: the service stayed saturated (429); left for the next run"
                    )
                    return None
            except (AuthError, QuotaError) as exc:
                self._give_back()
                refused = error_record("refused", str(exc.status or exc.code), exc.message)
                if await self._refused_item_only(job, exc):
                    await self._fail(item.id, refused)
                    return None
                if self._undecided(exc):  # the next create decides: this prompt, or the whole run
                    self.held.append((item.id, refused))
                    return None
                self._stop("refused", fatal=exc)
                raise Stopped from exc
            except (UsageError, WayRefused) as exc:
                self._give_back()
                self._stop("refused", fatal=exc)
                raise Stopped from exc
            except ModelUnavailable as exc:
                self._give_back()
                if (line := self.gate.went(item.model, exc.message)) is not None:
                    self.reporter.error(line, event="model_unavailable", model=item.model)
                self.ledger.failed(item.id, self.gate.error(item.model))
                await self.ledger.durable()
                return None
            except RequestRejected as exc:
                self._give_back()
                await self._fail(item.id, error_record("rejected", exc.code, exc.message))
                return None
            except (ServiceError, TransportError) as exc:
                if isinstance(exc, TransportError) and not exc.sent:
                    self._give_back()
                failed += 1
                if failed >= self.settings.retry.calls:
                    self.reporter.warning(f"item {item.id!r}: createTask kept failing ({exc}); left for the next run")
                    return None
                delay = self.settings.retry.delay(failed, self.rng.random())
                self.counters.retries += 1  # the next call may be paid too (the last one is in doubt, or not sent)
                self.reporter.debug(f"item {item.id!r}: createTask failed ({exc}); retrying in {delay:.1f} s")
                await asyncio.sleep(delay)

    async def _refused_item_only(self, job: asyncio.Task[str], exc: AuthError | QuotaError) -> bool:
        """Whether a 401/403 for this item leaves the run going: JSON answers for other items keep succeeding.
        The createTask calls under way at the same moment decide first (a burst of 20 answers together)."""
        others = [other for other in self.creating if other is not job]
        if others and not self.refusals.accepted:
            await asyncio.wait(others)
        return self.refusals.item_only(exc)

    def _undecided(self, exc: AuthError | QuotaError) -> bool:
        """A first refusal, nothing accepted yet, nothing else under way, other items still to send: one item's
        refusal (a WAF and this prompt) or the run's (the key) cannot be told yet. The item is held, unsent and
        pending; the next create decides (a success fails the held items, a refusal ends the run)."""
        return (
            not self.refusals.accepted
            and self.refusals.in_a_row == 1
            and exc.code not in ACCOUNT_CODES
            and self._more_to_create()
        )

    async def _fail_held(self) -> None:
        """A create succeeded: the items refused before it were refused for themselves."""
        while self.held:
            item_id, error = self.held.pop()
            await self._fail(item_id, error)

    def _free_slot(self, slot: list[float], job: asyncio.Future[str]) -> None:
        """A call that ended still holding its window slot as under way (its intent could not be written, or
        a second signal cancelled it before it began) never reached the service: free the slot, or the window
        would wait for it for ever."""
        if slot[0] == math.inf:
            self.throttle.window.forget(slot)

    def _give_back(self) -> None:
        if self.creates_left is not None:
            self.creates_left += 1

    async def _create(
        self, item: Item, request: dict[str, Any], callback: str | None, slot: list[float], body: dict[str, Any]
    ) -> str:
        """One createTask call, bracketed by the ledger: intent before, the task id (fsync'd) after.

        Its create-window slot counts from the moment the answer arrives, unless the service dropped the call.
        A failure after the request left that does not prove nothing was created (a 5xx, a lost answer, a
        stop inside the call) marks the item in doubt: it may have been paid.
        """
        self.ledger.start_submit(item.id, request)
        try:
            await self.ledger.durable()  # the intent is on disk before the request leaves
        except BaseException:
            self.ledger.submit_unsent(item.id)
            raise
        sent = time.monotonic()
        # What the service has of ours as this leaves, running or being asked for: below an unconfirmed "full"
        # level this create refills a slot seen free; at it, taken, it shows room past it (on_create_success)
        held = self.throttle.limiter.running + self.asking
        self.throttle.window.leaving(slot)
        self.asking += 1
        try:
            try:
                task_id = await self.client.create_task(body, callback)
            finally:
                self.asking -= 1
        except RateLimited:
            self.throttle.window.forget(slot)
            self.ledger.submit_unsent(item.id)
            if self.budget is not None:
                self.budget.give_back(item.model)
            raise
        except BaseException as exc:
            self.throttle.window.done(slot)
            doubt = _maybe_created(exc)
            if self.budget is not None and not doubt:  # certainly not paid: its price is spent on another
                self.budget.give_back(item.model)
            self.ledger.submit_unsent(item.id, in_doubt=doubt)
            if doubt:
                self.counters.in_doubt += 1
                self.reporter.warning(
                    f"item {item.id!r}: createTask got no usable answer ({_reason(exc)}); it may have been "
                    "created and paid: marked in doubt" + ("" if self._stopping() else "; submitting again"),
                    item=item.id,
                )
            await self.ledger.durable()
            raise
        self.throttle.window.done(slot)
        self.counters.creates += 1  # paid, whatever happens next
        self.counters.creates_by_model[item.model] += 1
        self.refusals.on_success()
        unusable = self._unusable(task_id, item.id)
        if unusable is not None:  # paid, but never answerable: failed for good, counted as paid
            self.ledger.paid_without_task(item.id, unusable)
            await self.ledger.durable()
            await self._fail(item.id, unusable)
            raise _Taken
        self.ledger.submitted(item.id, task_id)
        self.throttle.limiter.started()  # running at the service from now on (the engine's poll ends it)
        self.throttle.on_create_success(held)
        if said := self.throttle.take_corrected():
            self.reporter.debug(said)
        try:
            await self.ledger.durable()  # the task id is on disk before anything else happens to it
        except BaseException:
            self.throttle.limiter.ended()
            raise
        self.reporter.debug(f"item {item.id!r}: submitted as {task_id}", item=item.id, task_id=task_id)
        self.sent[task_id] = sent  # the service created it after this: the watcher's lower bound on its birth
        return task_id

    def _saturated(self, exc: RateLimited, epoch: int, slot: list[float]) -> bool:
        """A createTask 429 for the call of create-window `slot`: the throttle slows everyone down at once (see
        limits.Throttle). Whether the service was taken to be full (at its capacity): then the refused item gives
        its in-flight slot back."""
        self.counters.rate_limited += 1
        t = self.throttle
        verdict = t.on_create_saturated(epoch, exc.retry_after, slot)
        if verdict is None:  # a 429 of a burst answered already: the same reading as the last one
            return t.last_kind not in (None, "rate")
        taken = {"capacity": "capacity (the service is full)", "rate": "rate", "both": "capacity and rate"}
        if said := t.take_corrected():
            self.reporter.debug(said)
        self.reporter.debug(
            f"service saturated (429), taken for {taken[verdict.kind]}: {verdict.running} tasks running, "
            f"{verdict.accepted} creates accepted in the {t.window.seconds:g} s window it met; in-flight limit "
            f"{t.limiter.limit}, create window {t.window.count}/{t.window.seconds:g} s"
            + (" (kept)" if verdict.kind == "capacity" else "")
            + (f", pause {verdict.pause:.1f} s" if verdict.pause else "")
        )
        return verdict.kind != "rate"


class _Taken(Exception):
    """Internal: createTask answered a task id another item holds (already failed and reported)."""


def _maybe_created(exc: BaseException) -> bool:
    """Whether a createTask that ended in `exc` after the request left may have created (and charged) a task."""
    if isinstance(exc, TransportError):
        return exc.sent
    return not isinstance(exc, NOT_CREATED)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "stopped inside the call"
    return str(exc) or type(exc).__name__


def _settle_job(job: asyncio.Task[Any]) -> None:
    """Retrieve a finished createTask job's exception: a stop cancels the shield's waiter, not the call, so its
    error (the key refused for every call of the burst) may be nobody's to read, and asyncio would log it as
    "never retrieved" on stderr."""
    if not job.cancelled():
        job.exception()
