"""The commands behind `batchgen COMMAND`: each takes the parsed flags and the invocation's Session, does its
one job, and returns its exit code or raises a BatchgenError for the ladder in cli.py to map.

Also the one way a command prints its result (`say`), so that a closed or full stdout is seen by the ladder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import config, manifest, memory, plan, report, runner, sheet
from .args import build_parser, parse_rate
from .callbacks import parse_listen
from .config import RunSettings
from .errors import BatchgenError, ManifestError, StorageError, UsageError
from .files import write_atomically
from .progress import Reporter, plural


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
    price = plan.price_from(args.price, os.environ)
    problems = 0
    for path in args.manifests:
        try:
            loaded = manifest.load_counted(path)
        except ManifestError as exc:
            problems += len(exc.problems)
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        count = len(loaded.items)
        say(f"{path}: {plan.item_counts(loaded.listed, count)}, valid{plan.upper_bound(count, price)}")
    if problems:
        print(f"{plural(problems, 'problem')} found; nothing would be submitted", file=sys.stderr)
        return 2
    return 0


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
        adopt_ledger=args.adopt_ledger,
        limit=args.limit,
        max_runtime=args.max_runtime,
        dry_run=args.dry_run,
        price=plan.price_from(args.price, env),
        name=args.name,
        metadata=args.metadata,
        callback_url=callback,
        callback_listen=args.callback_listen,
        log_format=args.log_format,
        quiet=args.quiet,
        verbose=args.verbose,
        progress=not args.no_progress,
    )


def cmd_run(args: argparse.Namespace, session: Session) -> int:
    out = session.out
    session.manifest = Path(args.manifest).name
    session.directory = args.out
    out.configure(quiet=args.quiet, verbose=args.verbose, progress=not args.no_progress, secret=None)
    warnings: list[str] = []
    if args.metrics_file and not args.dry_run and (problem := report.metrics_problem(Path(args.metrics_file))):
        session.metrics_file = None  # refused: nothing is written there, on any exit path
        raise UsageError(f"--metrics-file {args.metrics_file}: {problem}")
    try:
        with _stop_on_signals() as early:  # reading the key from a pipe (`--api-key-file <(…)`) may block too
            settings = settings_from(args, os.environ, warnings)
            secret = settings.api_key.value if settings.api_key else None
            out.configure(quiet=settings.quiet, verbose=settings.verbose, progress=settings.progress, secret=secret)
            for warning in warnings:
                out.warning(warning)
            if settings.dry_run:
                return runner.dry_run(settings, out)
            with asyncio.Runner() as loop:
                outcome = loop.run(runner.run(settings, out))
                early.over = True  # the outcome is reached: a signal while the loop closes must not lose it
    finally:
        out.close()
    session.counts = outcome.counts
    session.figures = dict(runner.figures(outcome))
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
    say(json.dumps(doc, indent=1, ensure_ascii=False) if args.json else report.status_text(doc))
    if not args.json and doc["services"]:
        say(memory.describe_text(doc["services"]))
    return 0


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
    return 0


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
    return 0


def _differs(path: Path, data: bytes) -> bool:
    """Whether writing `data` at `path` would change what is there; a symlink always differs (never read)."""
    if path.is_symlink():
        return True
    if not path.exists():
        return False
    if not path.is_file():
        return True
    try:
        return path.read_bytes() != data
    except OSError:
        return True


def cmd_completion(args: argparse.Namespace, session: Session) -> int:
    try:
        import shtab
    except ImportError:
        raise UsageError(
            "shell completion needs shtab: pip install 'batchgen[completion]' (or pip install shtab)"
        ) from None
    say(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_sim(args: argparse.Namespace, session: Session) -> int:
    from .sim import SimConfig, serve_until_stopped

    # The flags are named after SimConfig's fields; three need parsing.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig) if hasattr(args, f.name)}
    values["rate"] = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    values["poll_limit"] = parse_rate(args.poll_limit, "--poll-limit") if args.poll_limit else None
    values["url_ttl"] = args.url_ttl or None
    sim_config = SimConfig(**values)
    try:
        asyncio.run(serve_until_stopped(sim_config))
    except OSError as exc:
        raise UsageError(f"cannot listen on {sim_config.host}:{sim_config.port}: {exc.strerror or exc}") from exc
    return 0


COMMANDS = {
    "validate": cmd_validate,
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "sim": cmd_sim,
    "jobs": cmd_jobs,
    "completion": cmd_completion,
}
