"""The run around the engine: load and plan, announce, wire the signals, the callbacks and `--simulate`, run
the Engine, and turn what happened into an Outcome and SPEC's exit code. `dry_run` shares the loading and the plan.

The Engine (engine.py) knows an item's life under the limits; this module knows the run's: it is the only one
that starts the simulator in-process or the callback receiver, and the only one that maps a run to an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

from . import manifest, names, sheet
from .callbacks import CallbackReceiver, parse_listen
from .client import Client, open_session
from .config import RunSettings, Secret, is_loopback
from .engine import Engine
from .errors import BatchgenError, StorageError, UsageError
from .ledger import Ledger, load
from .ledger import exists as ledger_exists
from .manifest import Item
from .memory import forget_service
from .plan import Plan, describe, make_plan
from .progress import Reporter, plural
from .records import price_of
from .submit import Counters


@dataclass(slots=True)
class Outcome:
    exit_code: int
    counts: dict[str, int]
    counters: Counters
    seconds: float
    price: Decimal | None = None  # per image: --price, else the one the ledger recorded
    paid_total: int = 0  # paid creates the ledger counts over every item's life (spend so far = this × price)


def exit_code(counts: dict[str, int], fatal: BatchgenError | None = None, signum: int | None = None) -> int:
    """SPEC's exit code, most severe first: 3 (key/quota) or the fatal error's own, 128+N, 5, 1, 0."""
    if fatal is not None:
        return fatal.exit_code
    if signum is not None:
        return 128 + signum
    if counts["pending"] or counts["submitted"]:
        return 5
    return 1 if counts["failed"] else 0


def dry_run(settings: RunSettings, reporter: Reporter) -> int:
    """Validate, compare with the ledger, print what a run would do; contact nothing, write nothing."""
    with _bulk():
        items = manifest.load(settings.manifest)
        _stems(items, settings)
        loaded = load(settings.out) if ledger_exists(settings.out) else None
    records = loaded.items if loaded else {}
    plan = make_plan(items, records, retry_failed=settings.retry_failed, directory=settings.out)
    if loaded and loaded.manifest not in (None, settings.manifest.name) and not settings.adopt_ledger:
        print(f"  note: {settings.out}/results.json was made for {loaded.manifest!r}: a run needs --adopt-ledger")
    if loaded and loaded.damaged:
        print(f"  note: {loaded.damaged}; a run will rebuild it from the journal")
    print("\n".join(describe(plan, settings)))
    return 0


class _Stop:
    """SIGINT/SIGTERM for the whole run: before the engine exists a signal is kept (the run then ends before
    contacting anything, exit 128+N); once it runs, each signal goes to `Engine.stop` (a second one: at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.engine: Engine | None = None

    def __call__(self, signum: int) -> None:
        if self.engine is not None:
            self.engine.stop(f"signal {signal.Signals(signum).name}", signum=signum)
        elif self.signum is None:
            self.signum = signum

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        if self.signum is not None:
            self(self.signum)


async def run(settings: RunSettings, reporter: Reporter) -> Outcome:
    """The main job. Raises ManifestError/UsageError (exit 2) or LockedError (exit 4) before any request."""
    stop = _Stop()
    with _signals(stop):
        return await _run(settings, reporter, stop)


async def _run(settings: RunSettings, reporter: Reporter, stop: _Stop) -> Outcome:
    started = time.monotonic()
    with _bulk():  # a signal meanwhile waits for the event loop: it is handled once loading is done
        items = manifest.load(settings.manifest)
        stems = _stems(items, settings)  # a --name that collides or leaves DIR: exit 2 before anything is sent
        ledger = Ledger.open(settings.out, settings.manifest.name, adopt=settings.adopt_ledger)
    outcome: Outcome | None = None
    try:
        if ledger.recovered:
            reporter.warning(
                f"{ledger.recovered}: rebuilt it from the previous snapshot and the journal; the "
                "damaged file is kept beside it as results.json.damaged-*"
            )
        plan = make_plan(items, ledger.items, retry_failed=settings.retry_failed, directory=settings.out)
        ledger.track(items)
        if settings.price is not None:
            ledger.set_price(str(settings.price))
        for item in plan.missing:
            ledger.refetch(item.id)
        _announce(plan, items, settings, reporter)
        if (not plan.submit and not plan.resume) or stop.signum is not None:  # contact nothing, need no key
            if settings.forget_service and stop.signum is None:
                forget_service(settings, reporter)  # forgotten also when DIR has nothing left to do
            counts = ledger.counts(ledger.manifest_ids)
            outcome = Outcome(exit_code(counts, signum=stop.signum), counts, Counters(), time.monotonic() - started)
            _spend(outcome, ledger)
            return outcome
        async with (
            _service(settings, reporter) as (api_base, key),
            open_session(settings.timeouts) as session,
            _callbacks(settings, reporter) as receiver,
        ):
            client = Client(session, api_base, key, settings.timeouts)
            callback_url = receiver.url_for(settings.callback_url) if receiver else settings.callback_url
            engine = Engine(settings, items, plan, ledger, client, reporter, callback_url=callback_url, stems=stems)
            if receiver is not None:
                receiver.on_task = engine.wake
            stop.attach(engine)
            await engine.run()
        reporter.close()
        counts = ledger.counts(engine.ids)
        outcome = Outcome(
            exit_code(counts, engine.fatal, engine.stop_signal), counts, engine.counters, time.monotonic() - started
        )
        _spend(outcome, ledger)
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


def _stems(items: list[Item], settings: RunSettings) -> dict[str, str] | None:
    """Every item's file-name stem under --name (None: the default `{id}`, SPEC §4's names)."""
    if settings.name == names.DEFAULT_TEMPLATE:
        return None
    return names.render_stems(items, settings.name, started=time.time())


def _spend(outcome: Outcome, ledger: Ledger) -> None:
    """What the run needs to report spend: the price (recorded in the ledger) and every paid create it counts."""
    outcome.price = price_of(ledger.price)
    outcome.paid_total = sum(int(record.get("paid", 0)) for record in ledger.items.values())


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
        f"{settings.manifest.name}: {plural(len(items), 'item')}; {len(plan.submit)} to submit "
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
    for item in plan.missing:
        reporter.warning(
            f"item {item.id!r}: a file the ledger records is gone from {settings.out}; fetching it again by "
            "its task id (no new charge)",
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
async def _callbacks(settings: RunSettings, reporter: Reporter) -> AsyncIterator[CallbackReceiver | None]:
    """With --callback-listen, receive the service's callbacks for the run's duration; they wake pollers."""
    if not settings.callback_listen:
        yield None
        return
    host, port = parse_listen(settings.callback_listen)
    if not settings.callback_url and not is_loopback(host):
        raise UsageError(
            "--callback-listen on an address other than loopback needs --callback-url: the public "
            "https:// URL that reaches this listener"
        )
    receiver = CallbackReceiver(host, port)
    try:
        await receiver.start()
    except OSError as exc:
        raise UsageError(f"--callback-listen {settings.callback_listen}: {exc.strerror or exc}") from exc
    try:
        reporter.info(f"receiving callbacks on {host}:{receiver.port} (polling continues as the fallback)")
        yield receiver
    finally:
        await receiver.close()


@contextlib.contextmanager
def _signals(stop: _Stop) -> Iterator[None]:
    """SIGINT/SIGTERM go to `stop` while the run's loop runs; before and after, the handlers the caller had
    (the CLI's, which unwind to the same exit code) are back in place, never the default that kills outright."""
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in handled}
    for signum in handled:
        loop.add_signal_handler(signum, functools.partial(stop, signum))
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)  # this resets the signal to its default ...
            if previous[signum] is not None:  # None: a handler not set from Python, nothing to restore
                signal.signal(signum, previous[signum])  # ... so the caller's own handler is put back


def figures(outcome: Outcome) -> dict[str, float]:
    """The run's figures for monitoring: the JSON summary line and the metrics file say the same (the CLI adds
    the time the run ended, once the contact sheet is written)."""
    n = outcome.counters
    return {
        "paid_creates": n.creates,
        "retries": n.retries,
        "rate_limited": n.rate_limited,
        "status_queries": n.polls,
        "callbacks": n.callbacks,
        "in_doubt": n.in_doubt,
        "lost": n.lost,
        "seconds": round(outcome.seconds, 3),
        "exit_code": outcome.exit_code,
        **spend_figures(n.creates, outcome.paid_total, outcome.price),
    }


def spend_figures(paid: int, paid_total: int, price: Decimal | None) -> dict[str, float]:
    """With a known price: this run's spend (its paid creates times the price) and the ledger's spend so far."""
    if price is None:
        return {}
    return {"price": float(price), "spend": float(price * paid), "spend_total": float(price * paid_total)}


def final_report(outcome: Outcome, settings: RunSettings, reporter: Reporter) -> None:
    """What is left to do, if anything; keeps the run's figures for the contact sheet. The summary line itself
    is the CLI's, the last line on every exit path."""
    try:  # for the contact sheet's header: the ledger holds items, not runs
        sheet.write_last_run(settings.out, figures(outcome))
    except (OSError, BatchgenError) as exc:
        reporter.warning(f"could not keep the run's figures for the contact sheet: {exc}")
    c = outcome.counts
    if outcome.exit_code == 5:
        reporter.info(
            f"incomplete: {c['pending']} pending, {c['submitted']} submitted; run the same command again to continue",
            event="incomplete",
        )
