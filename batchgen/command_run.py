"""`batchgen run`: the flags and the environment resolved once into RunSettings, the run (or --dry-run) with its
night's end, the summary and the contact sheet; signals before the run's own handlers stop it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

from . import (
    config,
    endactions,
    finish,
    models,
    prices,
    proxies,
    report,
    runner,
    sheet,
)
from .args import parse_rate
from .callbacks import parse_listen
from .config import RunSettings
from .errors import BatchgenError, UsageError
from .session import Session


def settings_from(args: argparse.Namespace, env: Mapping[str, str], warnings: list[str]) -> RunSettings:
    """Flags > environment > defaults, resolved once."""
    callback = args.callback_url
    if callback and (problem := config.check_callback_url(callback)):
        raise UsageError(f"--callback-url: {problem}")
    if args.callback_listen:
        try:
            parse_listen(args.callback_listen)
        except ValueError as exc:
            raise UsageError(f"--callback-listen: {exc}") from exc
    if not args.out:
        raise UsageError("--out: expected a directory, got an empty string")
    api_base = args.api_base or env.get("BATCHGEN_API_BASE", "")
    if not args.simulate and not args.dry_run:
        if not api_base:
            raise UsageError("no service address: pass --api-base URL or set BATCHGEN_API_BASE (or try --simulate)")
        api_base = config.check_api_base(api_base)
    key = None if args.simulate else config.read_key(env, args.api_key_file, warnings)
    cards = models.registry(args.models_dir, env, warnings)
    price = prices.from_settings(args.price, env)
    max_spend = None
    if args.max_spend is not None:
        limit = prices.parse(args.max_spend, "--max-spend")
        if limit is None or limit.by_model or limit.default is None:
            raise UsageError(f"--max-spend: expected an amount such as 5.00; got {args.max_spend!r}")
        if price is None:
            raise UsageError("--max-spend needs --price (or BATCHGEN_PRICE): the price of each model's image")
        max_spend = limit.default
    proxy, ca_bundle = way_from(args, env)
    return RunSettings(
        manifest=Path(args.manifest),
        out=Path(args.out),
        api_base=api_base,
        api_key=key,
        simulate=args.simulate,
        concurrency=args.concurrency,
        create_rate=parse_rate(args.create_rate, "--create-rate"),
        poll_rate=args.poll_rate,
        poll=config.PollSchedule(args.poll_interval),
        forget_service=args.forget_service,
        max_attempts=args.max_attempts,
        task_timeout=args.task_timeout,
        retry_failed=args.retry_failed,
        reroll=args.reroll,
        adopt_ledger=args.adopt_ledger,
        limit=args.limit,
        max_runtime=args.max_runtime,
        dry_run=args.dry_run,
        price=price.default if price is not None and not price.by_model else None,
        prices=price,
        max_spend=max_spend,
        name=args.name,
        metadata=args.metadata,
        cards=cards,
        callback_url=callback,
        callback_listen=args.callback_listen,
        log_format=args.log_format,
        quiet=args.quiet,
        verbose=args.verbose,
        progress=not args.no_progress,
        proxy=proxy,
        ca_bundle=ca_bundle,
    )


def way_from(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[proxies.ProxySettings, Path | None]:
    """--proxy / --ca-bundle over their environment variables (SPEC §1a), checked now: a bad one is exit 2."""
    proxy = proxies.resolve_proxy(args.proxy, env)
    bundle = args.ca_bundle if args.ca_bundle is not None else env.get("BATCHGEN_CA_BUNDLE") or None
    source = "--ca-bundle" if args.ca_bundle is not None else "BATCHGEN_CA_BUNDLE"
    return proxy, proxies.check_ca_bundle(bundle, source) if bundle else None


def cmd_run(args: argparse.Namespace, session: Session) -> int:
    out = session.out
    session.manifest = Path(args.manifest).name
    session.manifest_path = args.manifest
    session.directory = args.out
    masked = proxies.secrets_in(args.proxy, os.environ)  # until the key is read: the proxies' credentials
    out.configure(quiet=args.quiet, verbose=args.verbose, progress=not args.no_progress, secret=masked)
    warnings: list[str] = []
    if args.metrics_file and not args.dry_run and (problem := report.metrics_problem(Path(args.metrics_file))):
        session.metrics_file = None  # refused: nothing is written there, on any exit path
        raise UsageError(f"--metrics-file {args.metrics_file}: {problem}")
    try:
        with _stop_on_signals() as early:  # reading the key from a pipe (`--api-key-file <(…)`) may block too
            session.end = endactions.resolve(
                args.on_finish, args.notify, args.notify_on, args.ping, os.environ, warn=warnings.append
            )
            with contextlib.suppress(BatchgenError):  # the night's end goes the configured way on every exit path
                session.way = way_from(args, os.environ)
            settings = settings_from(args, os.environ, warnings)
            session.key = settings.api_key.value if settings.api_key else None
            session.way = settings.proxy, settings.ca_bundle
            out.configure(
                quiet=settings.quiet,
                verbose=settings.verbose,
                progress=settings.progress,
                secret=(*settings.secrets(), *masked),
            )
            for warning in warnings:
                out.warning(warning)
            if settings.dry_run:
                return runner.dry_run(settings, out)
            with asyncio.Runner() as loop:
                outcome = loop.run(
                    finish.started(
                        session.end,
                        runner.run(settings, out, session.hold),
                        out,
                        proxy=settings.proxy,
                        ca_bundle=settings.ca_bundle,
                    )
                )
                early.over = True  # the outcome is reached: a signal while the loop closes must not lose it
    finally:
        out.close()
    session.counts = outcome.counts
    session.figures = dict(runner.figures(outcome))
    session.failures = outcome.failures
    session.by_model = dict(outcome.counters.creates_by_model)
    runner.final_report(outcome, settings, out)
    if args.report:
        try:
            out.info(f"contact sheet: {sheet.write_report(settings.out)}", event="contact_sheet")
        except (BatchgenError, OSError) as exc:  # the run's own outcome stands; the page can be made later
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            out.error(
                f"the contact sheet {settings.out / 'index.html'} could not be written: {reason}; "
                f"`batchgen report {settings.out}` retries it",
                event="contact_sheet_error",
            )
    return outcome.exit_code


class StoppedEarly(BaseException):
    """SIGTERM or SIGINT before the run's own handlers are in place (reading a large manifest, opening the
    ledger): unwinds like Ctrl-C, so that the ledger is closed and the metrics and summary are still written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Early:
    """While `over` is False, SIGTERM/SIGINT raise StoppedEarly; after, they are noted and the run ends as it is."""

    over = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Early]:
    early = _Early()

    def stop(signum: int, frame: object) -> None:
        if not early.over:
            raise StoppedEarly(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield early  # the engine's loop installs its own handlers for its duration (they stop the run gracefully)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
