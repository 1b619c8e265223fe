"""The commands behind `batchgen COMMAND`: each takes the parsed flags and the invocation's Session, does its
one job, and returns its exit code or raises a BatchgenError for the ladder in cli.py to map.

Also the one way a command prints its result (`say`), so that a closed or full stdout is seen by the ladder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import errno
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import (
    config,
    doctor,
    endactions,
    finish,
    manifest,
    memory,
    models,
    names,
    plan,
    prices,
    proxies,
    report,
    review,
    runner,
    sheet,
)
from .args import build_parser, parse_rate
from .callbacks import parse_listen
from .config import RunSettings
from .errors import BatchgenError, ExitCode, ManifestError, StorageError, UsageError
from .escapes import visible, visible_json
from .files import write_atomically
from .progress import Reporter, plural
from .readers import read_bounded


@dataclass(slots=True)
class Session:
    """What the ladder must know to finish any exit path: where to log, where the metrics go, what was done."""

    out: Reporter
    is_run: bool = False  # `run`: metrics file and summary line on every exit path
    dry_run: bool = False
    metrics_file: str | None = None
    manifest: str | None = None  # the metrics label; None: unknown (the flags could not be read)
    directory: str | None = None  # DIR, for the crash log
    counts: dict[str, int] | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    # The night's end (finish.py): the actions, what they are told, and DIR's lock kept for them.
    end: endactions.EndActions = field(default_factory=endactions.EndActions)
    manifest_path: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    hold: finish.LockHold = field(default_factory=finish.LockHold)
    way: tuple[proxies.ProxySettings | None, Path | None] = (None, None)  # the run's proxies and CA bundle
    by_model: dict[str, int] = field(default_factory=dict)  # this run's paid creates per model


class StdoutError(Exception):
    """Writing to stdout failed for a reason other than a closed pipe (`batchgen status DIR > /dev/full`)."""


def say(text: str) -> None:
    """One result on stdout (a command's output, not a log line), flushed now so that a full disk or a closed
    pipe is seen here, by the ladder, not by the interpreter's last flush."""
    flush_stdout(text + "\n")


def flush_stdout(text: str = "") -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from exc
        raise StdoutError(exc.strerror or str(exc)) from exc


def cmd_validate(args: argparse.Namespace, session: Session) -> int:
    price = prices.from_settings(args.price, os.environ)
    notes: list[str] = []
    cards = models.registry(args.models_dir, os.environ, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.model is not None and cards.get(args.model) is None:
        raise UsageError(f"--model: {cards.unknown_model(args.model)}")
    problems = 0
    for path in args.manifests:
        try:
            loaded = manifest.load_counted(path, model=args.model, cards=cards)
            stems = None if args.name == names.DEFAULT_TEMPLATE else names.render_stems(loaded.items, args.name)
            names.check_lengths(loaded.items, stems, Path(args.out) if args.out else None)
        except ManifestError as exc:
            problems += len(exc.problems)
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        for line in models.sunset_warnings(cards, {item.model for item in loaded.items}, datetime.date.today()):
            print(f"warning: {path}: {line}", file=sys.stderr)
        count = len(loaded.items)
        single = price.default if price is not None and not price.by_model else None
        say(f"{visible(path)}: {plan.item_counts(loaded.listed, count)}, valid{plan.upper_bound(count, single)}")
        if price is not None and price.by_model:
            parts, total = prices.costs(Counter(item.model for item in loaded.items), price)
            in_all = f"; {total} in all" if total is not None else ""
            say(f"  at most, if every item is paid for once: {'; '.join(parts)}{in_all}")
    if problems:
        print(f"{plural(problems, 'problem')} found; nothing would be submitted", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


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


def cmd_status(args: argparse.Namespace, session: Session) -> int:
    doc = report.status(Path(args.directory))
    directory = Path(args.directory)  # what runs learned (memory.py) about the services DIR's runs used
    doc["services"] = memory.describe(os.environ, directory, memory.used(directory))
    say(visible_json(json.dumps(doc, indent=1, ensure_ascii=False)) if args.json else report.status_text(doc))
    if not args.json and doc["services"]:
        say(memory.describe_text(doc["services"]))
    return ExitCode.OK


def cmd_report(args: argparse.Namespace, session: Session) -> int:
    directory = Path(args.directory)
    try:
        page = sheet.write_report(directory)
    except OSError as exc:  # DIR/index.html is a folder, DIR is read-only, the disk is full: one clear line
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise StorageError(f"{directory}/index.html: cannot write it: {reason}") from exc
        raise UsageError(f"{directory}/index.html: cannot write it: {reason}") from exc
    say(str(page))
    return ExitCode.OK


def cmd_review(args: argparse.Namespace, session: Session) -> int:
    directory = Path(args.directory)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    warning = review.check_listen(host, args.allow_remote)
    if warning:
        session.out.warning(warning)
    report.read_ledger(directory)  # no ledger: say so now, not on the first page load
    return asyncio.run(review.serve(review.Review(directory), host, port, say))


JOB_FILES = {"install": "jobs", "samples": "sample_manifests"}
EXECUTABLE = {"nightly.sh"}


def cmd_jobs(args: argparse.Namespace, session: Session) -> int:
    """Write out the files shipped in the package (batchgen/data/), so a pip user has them too.

    Each file is written atomically and never through a symlink: a link at a file's name counts as a file
    that differs (kept without --force); --force replaces the link itself, never the file it points to."""
    source = resources.files("batchgen") / "data" / JOB_FILES[args.what]
    target = Path(args.directory)
    if target.is_symlink() and not target.exists():
        raise UsageError(f"{target} is a symbolic link to nothing; name a directory")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is a file, not a directory; name a directory")
    shipped = sorted((entry.name, entry.read_bytes()) for entry in source.iterdir() if entry.is_file())
    differing = [name for name, data in shipped if _differs(target / name, data)]
    if differing and not args.force:
        raise UsageError(
            f"{target}: {', '.join(differing)} already there and different; nothing was written "
            "(--force overwrites them)"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, data in shipped:
            path = target / name
            # 755 for the script, 644 for the rest: the env example holds no secret
            write_atomically(path, data, target, mode=0o755 if name in EXECUTABLE else 0o644)
            say(str(path))
    except OSError as exc:
        raise UsageError(f"{target}: cannot write there: {exc.strerror or exc}") from exc
    return ExitCode.OK


def _differs(path: Path, data: bytes) -> bool:
    """Whether writing `data` at `path` would change what is there; a symlink always differs (never read)."""
    if path.is_symlink():
        return True
    if not path.exists():
        return False
    if not path.is_file():
        return True
    found = read_bounded(path, len(data), str(path))  # never a FIFO swapped in meanwhile, nor a 10 GB file
    return isinstance(found, str) or found != data


def cmd_completion(args: argparse.Namespace, session: Session) -> int:
    try:
        import shtab
    except ImportError:
        raise UsageError(
            "shell completion needs shtab: pip install 'batchgen[completion]' (or pip install shtab)"
        ) from None
    say(shtab.complete(build_parser(), shell=args.shell))
    return ExitCode.OK


def cmd_sim(args: argparse.Namespace, session: Session) -> int:
    from .sim import SimConfig, serve_until_stopped

    # The flags are named after SimConfig's fields; three need parsing.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig) if hasattr(args, f.name)}
    values["rate"] = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    values["poll_limit"] = parse_rate(args.poll_limit, "--poll-limit") if args.poll_limit else None
    values["url_ttl"] = args.url_ttl or None
    values["unsupported_models"] = tuple(args.unsupported_models or ())
    sim_config = SimConfig(**values)
    try:
        asyncio.run(serve_until_stopped(sim_config))
    except OSError as exc:
        raise UsageError(f"cannot listen on {sim_config.host}:{sim_config.port}: {exc.strerror or exc}") from exc
    return ExitCode.OK


def cmd_models(args: argparse.Namespace, session: Session) -> int:
    notes: list[str] = []
    cards = models.registry(args.models_dir, os.environ, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.name is None:
        lines = models.listing(cards)
    elif (card := cards.get(args.name)) is not None:
        lines = models.field_table(card)
    else:
        raise UsageError(cards.unknown_model(args.name))
    say("\n".join(lines))
    return ExitCode.OK


def cmd_doctor(args: argparse.Namespace, session: Session) -> int:
    """Check the way to the service, one line per step; exit 0, 3 refused, 1 unreachable, 2 usage."""
    api_base = args.api_base or os.environ.get("BATCHGEN_API_BASE", "")
    if not api_base:
        raise UsageError("no service address: pass --api-base URL or set BATCHGEN_API_BASE")
    api_base = config.check_api_base(api_base)
    warnings: list[str] = []
    key = config.read_key(os.environ, args.api_key_file, warnings)
    proxy, ca_bundle = way_from(args, os.environ)
    session.out.configure(
        quiet=False, verbose=False, progress=False, secret=(*((key.value,) if key else ()), *proxy.secrets())
    )
    for warning in warnings:
        session.out.warning(warning)
    out = Path(args.out) if args.out else None
    with asyncio.Runner() as loop:
        checks = loop.run(doctor.diagnose(api_base, key, proxy, proxies.tls_context(ca_bundle), out, os.environ))
        if args.notify:  # the night's end, tried the way it will go: BATCHGEN_NOTIFY's URLs and BATCHGEN_PING
            actions = endactions.resolve(None, None, None, None, os.environ)
            tried = loop.run(finish.test_notification(actions, session.out, proxy=proxy, ca_bundle=ca_bundle))
            fix = "check the URL in BATCHGEN_NOTIFY / BATCHGEN_PING and that its service is up (the lines above)"
            checks += [doctor.Check(line.split(":")[0], ok, line.split(": ", 1)[1], fix, 1) for ok, line in tried]
    for check in checks:
        say(session.out.redact(check.line()))
    return doctor.exit_code(checks)


COMMANDS = {
    "validate": cmd_validate,
    "models": cmd_models,
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "review": cmd_review,
    "sim": cmd_sim,
    "jobs": cmd_jobs,
    "completion": cmd_completion,
    "doctor": cmd_doctor,
}
