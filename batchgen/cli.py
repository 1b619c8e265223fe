"""The command line: parse arguments, call one function, map what it raised to an exit code.

Nothing imports this module. It knows nothing of HTTP.

The error ladder, most severe first (SPEC section 3):

    any other exception      a bug: one line, the traceback (key masked) in DIR/.batchgen/crash-<UTC time>.log,
                             exit 70 (EX_SOFTWARE); a group holding one BatchgenError is that error
    BatchgenError            its message, exit with its class's code (2 usage/manifest, 3 key/quota, 4 locked, 5)
    KeyboardInterrupt        before the run's own signal handling: 130
    BrokenPipeError          stdout closed by its reader (`| head`): quietly, 141 (128 + SIGPIPE)

`run` writes its metrics file (when it knows --metrics-file) and its summary line, last, on every one of these
paths, even when the flags themselves could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__, config, manifest, memory, plan, report, runner, sheet
from .args import FlagError, Parser, build_parser, exit_meaning, parse_rate
from .callbacks import parse_listen
from .config import RunSettings
from .errors import AuthError, BatchgenError, LockedError, ManifestError, QuotaError, StorageError, UsageError
from .files import state_dir, write_atomically
from .progress import Reporter, plural, utc_timestamp

EX_SOFTWARE = 70  # sysexits.h: an internal software error, i.e. a bug in batchgen
EX_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a program its reader stopped reading


# ---------------------------------------------------------------- one invocation


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


def _peek(argv: list[str]) -> argparse.Namespace:
    """The few flags every exit path needs, read leniently before the real parse (which may fail)."""
    peek = Parser(add_help=False)
    peek.add_argument("command", nargs="?")
    peek.add_argument("--log-format")
    peek.add_argument("--metrics-file")
    peek.add_argument("--out")
    peek.add_argument("-q", "--quiet", action="store_true")
    peek.add_argument("-v", "--verbose", action="store_true")
    peek.add_argument("--dry-run", action="store_true")
    try:
        found, _ = peek.parse_known_args(argv)
    except FlagError:
        found = argparse.Namespace(
            command=None, log_format=None, metrics_file=None, out=None, quiet=False, verbose=False, dry_run=False
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _reopen_closed_std_streams()
    early = _peek(argv)
    is_run = early.command == "run"
    fmt = "json" if is_run and early.log_format == "json" else "text"
    session = Session(
        Reporter(fmt=fmt, quiet=early.quiet, verbose=early.verbose, progress=False),
        is_run=is_run,
        dry_run=is_run and early.dry_run,
        metrics_file=early.metrics_file if is_run and not early.dry_run else None,
        directory=early.out if is_run else None,
    )
    with _python_logs_to(session.out):
        code = _ladder(session, argv)
        if session.is_run:
            code = _finish_run(session, code)
    return code


def _reopen_closed_std_streams() -> None:
    """`batchgen run … 2>&-`: a closed stdin, stdout or stderr becomes /dev/null, so that the run does its work
    (its lines are lost, its exit code is not), and no file batchgen opens later gets descriptor 2 (a stray
    write to stderr would land in the ledger)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115


class _ToReporter(logging.Handler):
    """What Python itself logs (asyncio's "never retrieved", warnings) as one of our lines: with --log-format
    json, even these are one JSON object each, never a bare traceback."""

    def __init__(self, out: Reporter) -> None:
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0] if record.getMessage() else record.name
        detail = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else None
        fields = {"logger": record.name, **({"detail": detail} if detail and self.out.fmt == "json" else {})}
        self.out.warning(f"{record.name}: {message}", event="python_log", **fields)


@contextlib.contextmanager
def _python_logs_to(out: Reporter) -> Iterator[None]:
    root = logging.getLogger()
    handler = _ToReporter(out)
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)


def _ladder(session: Session, argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = COMMANDS[args.command](args, session)
        _flush_stdout()
        return code
    except SystemExit:
        raise  # --help, --version: argparse has printed what was asked
    except BaseException as exc:  # the ladder's whole point: nothing escapes it as a traceback
        return _handle(session, exc)


def _handle(session: Session, raised: BaseException) -> int:
    out = session.out
    exc = _unwrap(raised)
    if isinstance(exc, FlagError):
        if out.fmt == "text":
            out.write_line(exc.usage.rstrip())
        out.error(str(exc), event="usage_error")
        return exc.exit_code
    if isinstance(exc, ManifestError):
        for problem in exc.problems:  # file:line first, as compilers print them: editors jump to it
            if out.fmt == "json":
                out.error(
                    str(problem),
                    event="manifest_problem",
                    file=problem.file,
                    line=problem.line,
                    item=problem.item,
                    field=problem.field,
                )
            else:
                out.write_line(out.redact(str(problem)))
        count = len(exc.problems)
        out.error(f"{plural(count, 'problem')} in the manifest; nothing was submitted", event="manifest_error")
        return exc.exit_code
    if isinstance(exc, BatchgenError):
        out.error(str(exc), event=_event_of(exc))
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt | StoppedEarly):
        signum = exc.signum if isinstance(exc, StoppedEarly) else signal.SIGINT
        out.warning(f"stopped by {signal.Signals(signum).name} before the run began", event="stopped")
        return 128 + signum
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
        return EX_PIPE
    if isinstance(exc, StdoutError):  # a full disk under stdout: what was asked was not delivered
        _silence_stdout()
        out.error(f"cannot write to standard output: {exc}", event="stdout_error")
        return StorageError.exit_code
    if isinstance(exc, Exception):
        return _crash(session, exc)
    raise raised  # GeneratorExit and the like: not ours to handle


def _unwrap(exc: BaseException) -> BaseException:
    """A TaskGroup wraps what its tasks raised in (nested) groups: one BatchgenError (or Ctrl-C) inside is
    that error, shown as itself; anything else stays a group, and is a bug."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        if len(leaves) == 1 and isinstance(
            leaves[0], BatchgenError | KeyboardInterrupt | StoppedEarly | BrokenPipeError
        ):
            return leaves[0]
    return exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _event_of(exc: BatchgenError) -> str:
    if isinstance(exc, LockedError):
        return "locked"
    if isinstance(exc, AuthError | QuotaError):
        return "refused"
    if isinstance(exc, StorageError):
        return "storage_error"
    if isinstance(exc, UsageError):
        return "usage_error"
    return "error"


class StdoutError(Exception):
    """Writing to stdout failed for a reason other than a closed pipe (`batchgen status DIR > /dev/full`)."""


def say(text: str) -> None:
    """One result on stdout (a command's output, not a log line), flushed now so that a full disk or a closed
    pipe is seen here, by the ladder, not by the interpreter's last flush."""
    _flush_stdout(text + "\n")


def _flush_stdout(text: str = "") -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from exc
        raise StdoutError(exc.strerror or str(exc)) from exc


def _silence_stdout() -> None:
    """The reader of stdout went away (`batchgen status DIR | head -2`): drop what is still buffered, so the
    interpreter's last flush does not print a BrokenPipeError of its own."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _crash(session: Session, exc: Exception) -> int:
    """A bug: one clear line; the whole traceback, key masked, in DIR/.batchgen/crash-<UTC time>.log."""
    out = session.out
    first = next(_leaves(exc))
    brief = out.redact(f"{type(first).__name__}: {first}".splitlines()[0][:300])
    trace = out.redact("".join(traceback.format_exception(exc)))
    log = _write_crash_log(session.directory, trace, out)
    if log is not None:
        out.error(
            f"unexpected error, a bug in batchgen: {brief}; the traceback is in {log} (please report it)",
            event="crash",
            crash_log=str(log),
        )
    elif out.fmt == "json":
        out.error(f"unexpected error, a bug in batchgen: {brief} (please report it)", event="crash", traceback=trace)
    else:
        out.error(f"unexpected error, a bug in batchgen: {brief} (please report it with this traceback)", event="crash")
        out.write_line(trace.rstrip())
    return EX_SOFTWARE


def _write_crash_log(directory: str | None, trace: str, out: Reporter) -> Path | None:
    if not directory:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    head = out.redact(f"batchgen {__version__} at {utc_timestamp()}, pid {os.getpid()}: {' '.join(sys.argv)}\n\n")
    try:
        folder = state_dir(Path(directory))
        for name in (f"crash-{stamp}.log", f"crash-{stamp}-{os.getpid()}.log"):
            try:
                fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(head + trace)
            return folder / name
    except (OSError, BatchgenError):
        pass  # no place for it: the traceback goes to stderr instead
    return None


def _finish_run(session: Session, code: int) -> int:
    """Every exit path of `run`: the metrics file (with the exit code and the time it ended), then the summary,
    the last line on stderr."""
    out = session.out
    figures = {**session.figures, "exit_code": code, "finished_timestamp": round(time.time(), 3)}
    if session.metrics_file and (problem := report.metrics_problem(Path(session.metrics_file))):
        out.error(f"--metrics-file {session.metrics_file}: not written: {problem}", event="metrics_error")
    elif session.metrics_file:
        path = Path(session.metrics_file)
        warnings: list[str] = []
        try:
            report.write_metrics(path, manifest=session.manifest, counts=session.counts, figures=figures, warn=warnings)
        except (OSError, BatchgenError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            out.error(f"--metrics-file {path}: cannot write it: {reason}", event="metrics_error")
        for warning in warnings:
            out.warning(warning, event="metrics_warning")
    if not (session.dry_run and out.fmt == "text"):
        out.final(session.counts, {**figures, "dry_run": True} if session.dry_run else figures, exit_meaning(code))
    return code


# ---------------------------------------------------------------- the commands


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
        with _stop_on_signals():  # reading the key from a pipe (`--api-key-file <(…)`) may block too
            settings = settings_from(args, os.environ, warnings)
            secret = settings.api_key.value if settings.api_key else None
            out.configure(quiet=settings.quiet, verbose=settings.verbose, progress=settings.progress, secret=secret)
            for warning in warnings:
                out.warning(warning)
            if settings.dry_run:
                return runner.dry_run(settings, out)
            outcome = asyncio.run(runner.run(settings, out))
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


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise StoppedEarly(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield  # the engine's loop installs its own handlers for its duration (they stop the run gracefully)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_status(args: argparse.Namespace, session: Session) -> int:
    doc = report.status(Path(args.directory))
    doc["services"] = memory.describe(os.environ, Path(args.directory))  # what runs learned (memory.py)
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
