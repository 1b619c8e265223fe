"""The run around the engine: load and plan, announce, wire the signals, the callbacks and `--simulate`, run
the Engine, and turn what happened into an Outcome and SPEC's exit code. `dry_run` shares the loading and the plan.

The Engine (engine.py) knows an item's life under the limits; this module knows the run's: it is the only one
that starts the simulator in-process or the callback receiver, and the only one that maps a run to an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import gc
import secrets
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

from . import decisions, manifest, models, names, prices, rolls, sheet
from .callbacks import CallbackReceiver, parse_listen
from .client import Client, open_session
from .config import RunSettings, Secret, holds_secret, is_loopback
from .endactions import first_failures
from .engine import Engine
from .errors import BatchgenError, ExitCode, ManifestError, Problem, StorageError, UsageError
from .finish import LockHold
from .ledger import Ledger, load
from .ledger import exists as ledger_exists
from .manifest import Item
from .memory import forget_service
from .outcome import Counters, Outcome, exit_code
from .plan import Plan, describe, make_plan
from .progress import Reporter, plural
from .proxies import tls_context
from .records import paid_total, price_of


def dry_run(settings: RunSettings, reporter: Reporter) -> int:
    """Validate, compare with the ledger, print what a run would do; contact nothing, write nothing."""
    with _bulk():
        items = manifest.load(settings.manifest, cards=settings.cards)
        _stems(items, settings)
        loaded = load(settings.out) if ledger_exists(settings.out) else None
    records = loaded.items if loaded else {}
    plan = make_plan(items, records, retry_failed=settings.retry_failed, directory=settings.out)
    cards = settings.cards or models.builtin()
    rolls.add_to_plan(plan, rolls.choose(items, records, settings.out, reroll=settings.reroll, cards=cards)[0])
    if loaded and loaded.manifest not in (None, settings.manifest.name) and not settings.adopt_ledger:
        print(f"  note: {settings.out}/results.json was made for {loaded.manifest!r}: a run needs --adopt-ledger")
    if loaded and loaded.damaged:
        print(f"  note: {loaded.damaged}; a run will rebuild it from the journal")
    print("\n".join(describe(plan, settings)))
    return ExitCode.OK


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


async def run(settings: RunSettings, reporter: Reporter, hold: LockHold | None = None) -> Outcome:
    """The main job. Raises ManifestError/UsageError (exit 2) or LockedError (exit 4) before any request.
    With `hold`, DIR stays locked past the ledger's close, for the end actions (finish.py) to release."""
    stop = _Stop()
    try:
        with _signals(stop):
            return await _run(settings, reporter, stop, hold)
    finally:
        gc.unfreeze()  # what loading froze (see _bulk) is the collector's again


async def _run(settings: RunSettings, reporter: Reporter, stop: _Stop, hold: LockHold | None) -> Outcome:
    started = time.monotonic()
    with _bulk(freeze=True):  # a signal meanwhile waits for the event loop: it is handled once loading is done
        items = manifest.load(settings.manifest, cards=settings.cards)
        money = settings.prices if settings.max_spend is not None else None
        if money is not None and (missing := money.missing({item.model for item in items})):
            raise UsageError(f"--max-spend needs a price for every model; --price has none for {', '.join(missing)}")
        stems = _stems(items, settings)  # a --name that collides or leaves DIR: exit 2 before anything is sent
        ledger = Ledger.open(settings.out, settings.manifest.name, adopt=settings.adopt_ledger)
    outcome: Outcome | None = None
    try:
        plan, rolls_left = _prepare(ledger, items, settings, reporter)
        _announce(plan, items, settings, reporter)
        if (not plan.submit and not plan.resume) or stop.signum is not None:  # contact nothing, need no key
            if settings.forget_service and stop.signum is None:
                forget_service(settings, reporter)  # forgotten also when DIR has nothing left to do
            outcome = _outcome(ledger, Counters(), started, signum=stop.signum, held_back=rolls_left)
            return outcome
        async with (
            _service(settings, reporter) as (api_base, key),
            open_session(settings.timeouts, _tls(settings)) as session,
            _callbacks(settings, reporter) as receiver,
        ):
            client = Client(session, api_base, key, settings.timeouts, settings.proxy)
            callback_url = receiver.url_for(settings.callback_url) if receiver else settings.callback_url
            engine = Engine(settings, items, plan, ledger, client, reporter, callback_url=callback_url, stems=stems)
            if receiver is not None:
                receiver.on_task = engine.wake
            stop.attach(engine)
            await engine.run()
            budget_left = (budget := engine.submitter.budget) is not None and budget.reached
            if budget is not None and budget.reached:
                reporter.warning(
                    f"--max-spend {budget.limit} reached ({budget.spent} spent or in doubt): nothing more is created; "
                    "rerun to continue"
                )
            if not client.answered and client.last_failure and engine.fatal is None:
                reporter.error(
                    f"the service at {api_base} was never reached this run (last: {client.last_failure}); check "
                    "the network and the proxy settings: `batchgen doctor` checks the way step by step",
                    event="never_reached",
                )
        reporter.close()
        held_back = budget_left or rolls_left  # a create --max-spend or --limit held back is still to do
        outcome = _outcome(
            ledger, engine.counters, started, fatal=engine.fatal, signum=engine.stop_signal, held_back=held_back
        )
        if engine.fatal is not None:
            reporter.error(f"{engine.fatal}; run stopped, state saved")
        return outcome
    finally:
        if hold is not None:
            with contextlib.suppress(OSError):  # no descriptor left: the lock goes with the ledger, as before
                hold.keep(ledger.lock_descriptor())
        try:
            ledger.close()
        except StorageError as exc:  # the journal still holds what the snapshot could not: nothing is lost
            if outcome is None:
                raise
            reporter.error(str(exc))
            if outcome.exit_code in (ExitCode.OK, ExitCode.FAILED):
                outcome.exit_code = StorageError.exit_code


def _prepare(ledger: Ledger, items: list[Item], settings: RunSettings, reporter: Reporter) -> tuple[Plan, bool]:
    """The open ledger brought up to this run: the plan, the manifest tracked, decisions and re-rolls folded in,
    prices and cards recorded, missing files sent back to be fetched again. Also whether --limit holds back
    re-rolls (their items stay `succeeded`, so only the exit code can say that work is left)."""
    if ledger.recovered:
        reporter.warning(
            f"{ledger.recovered}: rebuilt it from the previous snapshot and the journal; the "
            "damaged file is kept beside it as results.json.damaged-*"
        )
    plan = make_plan(items, ledger.items, retry_failed=settings.retry_failed, directory=settings.out)
    ledger.track(items)
    decisions.copy_into(ledger)
    cards = settings.cards or models.builtin()
    chosen, refused = rolls.choose(items, ledger.items, settings.out, reroll=settings.reroll, cards=cards)
    for item_id in refused:
        reporter.warning(
            f"item {item_id!r}: rejected, but its files cannot be kept under a ~roll name (taken, or too "
            "long), or no seed is left above its last one: not re-rolled; nothing was sent"
        )
    chosen = rolls.add_to_plan(plan, chosen)
    rolls.begin(ledger, chosen, settings.limit)
    rolls_left = settings.limit is not None and len(chosen) > settings.limit
    if settings.prices is not None:
        ledger.set_price(str(settings.prices))
    used = {item.model for item in items}
    ledger.set_cards(models.used(cards, used))
    for line in models.sunset_warnings(cards, used, datetime.date.today()):
        reporter.warning(line)
    for item in plan.missing:
        ledger.refetch(item.id)
    return plan, rolls_left


def _outcome(
    ledger: Ledger,
    counters: Counters,
    started: float,
    *,
    fatal: BatchgenError | None = None,
    signum: int | None = None,
    held_back: bool = False,
) -> Outcome:
    """What the run reports, from the ledger's counts of the manifest's items: exit code, spend, first failures.
    `held_back`: --limit or --max-spend kept a re-roll back, work the counts cannot show (its item is succeeded)."""
    counts = ledger.counts(ledger.manifest_ids)
    outcome = Outcome(exit_code(counts, fatal, signum), counts, counters, time.monotonic() - started)
    if held_back and outcome.exit_code in (ExitCode.OK, ExitCode.FAILED):
        outcome.exit_code = ExitCode.INCOMPLETE
    _spend(outcome, ledger)
    outcome.failures = first_failures(ledger.items, ledger.manifest_ids)
    return outcome


def _stems(items: list[Item], settings: RunSettings) -> dict[str, str] | None:
    """Every item's file-name stem under --name (None: the default `{id}`, SPEC §4's names); ManifestError, before
    anything is sent, for a name that is not allowed or that the file system would refuse once paid for."""
    stems = None
    if settings.name != names.DEFAULT_TEMPLATE:
        stems = names.render_stems(items, settings.name, started=time.time())
    names.check_lengths(items, stems, settings.out)
    _refuse_key(items, stems, settings.api_key)
    return stems


def _refuse_key(items: list[Item], stems: dict[str, str] | None, key: Secret | None) -> None:
    """ManifestError when an item's id, file name or any value holds the API key, in any form (a wildcard file
    beside the key file, `{file: api-key}`): it would reach file names, the ledger, sidecars, the contact sheet
    and logs, some of them cut short where no mask can find it. Refused before anything is sent or written; the
    message names the item by its line only, never by its id or value."""
    if key is None:
        return
    # One look at 1,000 items' values at once first (0.4 s -> 0.05 s for 100,000 items): a value's letters and
    # digits are a run of the whole text's (the separator has none), so a key in no value is not in the whole.
    stems = stems or {}
    problems = []
    for start in range(0, len(items), 1000):
        some = items[start : start + 1000]
        whole = " ".join(str(t) for item in some for t in (item.id, stems.get(item.id, ""), *item.input.values()))
        if not holds_secret(whole, key.value):
            continue
        for item in some:
            texts = {"id": item.id, "--name": stems.get(item.id, ""), **item.input}
            found = next((field for field, text in texts.items() if holds_secret(str(text), key.value)), None)
            if found is not None:
                message = "holds the API key (a value from a wildcard file?); remove it"
                problems.append(Problem(item.file, item.line, message, field=found))
    if problems:
        raise ManifestError(problems)


def _spend(outcome: Outcome, ledger: Ledger) -> None:
    """What the run needs to report spend: the price (recorded in the ledger) and every paid create it counts."""
    outcome.price = price_of(ledger.price)
    outcome.paid_total = paid_total(ledger.items)
    recorded = prices.recorded(ledger.price)
    if recorded is not None and recorded.by_model:
        outcome.prices = recorded
        _, outcome.spend = prices.costs(outcome.counters.creates_by_model, recorded)
        _, outcome.spend_total = prices.costs(prices.paid_by_model(ledger.items.values()), recorded)


@contextlib.contextmanager
def _bulk(*, freeze: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while loading a manifest and a ledger: 100,000 items make millions
    of small acyclic objects, and the collector's passes over them were 60% of the load time (1.9 s -> 0.8 s).

    With `freeze`, what was loaded then goes to the collector's permanent generation (gc.freeze) until the run
    ends: left in its youngest one, the first collection after loading walked those millions of objects, and
    every full one later walked them again (0.3-0.4 s before a resume's first createTask). They are acyclic, so
    reference counting still frees them; run() gives them back to the collector (gc.unfreeze) at its end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
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


def _tls(settings: RunSettings) -> ssl.SSLContext | None:
    """The run's TLS context: the --ca-bundle's, or None for the system's CAs, which aiohttp's own verifying
    context already holds (made when it is imported, honouring SSL_CERT_FILE and SSL_CERT_DIR as ours would): a
    second copy cost ~20 ms of CPU at every start, for a loopback run that never speaks TLS too."""
    return tls_context(settings.ca_bundle) if settings.ca_bundle is not None else None


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
    async with Simulator(config, settings.cards) as sim:  # it serves the run's cards, the user's too
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
        **({"spend": float(outcome.spend)} if outcome.spend is not None else {}),
        **({"spend_total": float(outcome.spend_total)} if outcome.spend_total is not None else {}),
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
    by_model = outcome.counters.creates_by_model
    if len(by_model) > 1 or (by_model and outcome.prices is not None):
        parts, total = prices.costs(by_model, outcome.prices or prices.Prices(outcome.price))
        cost = f"; {total} in all" if total is not None and (outcome.prices or outcome.price) else ""
        reporter.info(f"paid creates by model: {'; '.join(parts)}{cost}", event="paid_by_model")
    c = outcome.counts
    if outcome.exit_code == ExitCode.INCOMPLETE:
        reporter.info(
            f"incomplete: {c['pending']} pending, {c['submitted']} submitted; run the same command again to continue",
            event="incomplete",
        )
