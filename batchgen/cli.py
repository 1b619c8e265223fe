"""The command line: parse arguments, call one function, map what it raised to an exit code.

Nothing imports this module. It knows nothing of HTTP.

The error ladder, most severe first (SPEC section 3):

    any other exception      a bug: one line, the traceback (key masked) in DIR/.batchgen/crash-<UTC time>.log,
                             exit 70 (ExitCode.SOFTWARE); a group holding one BatchgenError is that error
    BatchgenError            its message, exit with its class's code (2 usage/manifest, 3 key/quota, 4 locked, 5)
    KeyboardInterrupt        before the run's own signal handling: 130
    BrokenPipeError          stdout closed by its reader (`| head`): quietly, 141 (128 + SIGPIPE)

`run` writes its metrics file (when it knows --metrics-file) and its summary line, last, on every one of these
paths, even when the flags themselves could not be read.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import __version__, endactions, finish, report
from .args import FlagError, Parser, build_parser, exit_meaning
from .commands import COMMANDS, Session, StdoutError, StoppedEarly, flush_stdout
from .errors import (
    AuthError,
    BatchgenError,
    ExitCode,
    LockedError,
    ManifestError,
    QuotaError,
    StorageError,
    UsageError,
    WayRefused,
)
from .escapes import visible
from .files import state_dir
from .progress import Reporter, plural, utc_timestamp
from .proxies import secrets_in

EX_PIPE = ExitCode.signal(signal.SIGPIPE)  # what a shell reports for a program its reader stopped reading


# ---------------------------------------------------------------- one invocation


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
    for flag in ("--on-finish", "--notify"):  # the end actions (finish.py) run on every exit path
        peek.add_argument(flag, action="append")
    peek.add_argument("--notify-on")
    peek.add_argument("--ping")
    peek.add_argument("--proxy")
    try:
        found, _ = peek.parse_known_args(argv)
    except FlagError:
        found = argparse.Namespace(
            command=None,
            log_format=None,
            metrics_file=None,
            out=None,
            quiet=False,
            verbose=False,
            dry_run=False,
            proxy=None,
        )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _reopen_closed_std_streams()
    early = _peek(argv)
    is_run = early.command == "run"
    fmt = "json" if is_run and early.log_format == "json" else "text"
    session = Session(
        Reporter(
            fmt=fmt,
            quiet=early.quiet,
            verbose=early.verbose,
            progress=False,
            secret=secrets_in(early.proxy, os.environ),  # proxy credentials are masked from the first line
        ),
        is_run=is_run,
        dry_run=is_run and early.dry_run,
        metrics_file=early.metrics_file if is_run and not early.dry_run else None,
        directory=early.out if is_run else None,
    )
    if is_run and not early.dry_run:  # read leniently here: they run even when the flags cannot all be read
        hooks, urls, when, ping = (getattr(early, name, None) for name in ("on_finish", "notify", "notify_on", "ping"))
        session.end = endactions.resolve(hooks, urls, when, ping, os.environ, strict=False)
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
        flush_stdout()
        return code
    except SystemExit:  # --help, --version: argparse has printed what was asked ...
        try:
            sys.stdout.flush()
        except OSError:  # ... to a reader that went away (`batchgen --help | true`): no "Exception ignored"
            _silence_stdout()
        raise
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
        return ExitCode.signal(signum)
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
    if isinstance(exc, AuthError | QuotaError | WayRefused):
        return "refused"
    if isinstance(exc, StorageError):
        return "storage_error"
    if isinstance(exc, UsageError):
        return "usage_error"
    return "error"


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
        out.write_line("\n".join(visible(line) for line in trace.rstrip().splitlines()))  # may quote the service
    return ExitCode.SOFTWARE


def _write_crash_log(directory: str | None, trace: str, out: Reporter) -> Path | None:
    if not directory:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    argv = " ".join(endactions.mask_argv(sys.argv))
    head = out.redact(f"batchgen {__version__} at {utc_timestamp()}, pid {os.getpid()}: {argv}\n\n")
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
            report.write_metrics(
                path,
                manifest=session.manifest,
                counts=session.counts,
                figures=figures,
                warn=warnings,
                by_model=session.by_model,
            )
        except (OSError, BatchgenError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            out.error(f"--metrics-file {path}: cannot write it: {reason}", event="metrics_error")
        for warning in warnings:
            out.warning(warning, event="metrics_warning")
    meaning = exit_meaning(code, int(figures.get("paid_creates", 0)) + int(figures.get("in_doubt", 0)))
    if not session.dry_run:
        _end_actions(session, code, meaning)
    if not (session.dry_run and out.fmt == "text"):
        out.final(session.counts, {**figures, "dry_run": True} if session.dry_run else figures, meaning)
    return code


def _end_actions(session: Session, code: int, meaning: str) -> None:
    """The night's end (finish.py): hooks, the message, the final ping, after the ledger, the contact sheet and
    the metrics are final and while DIR is still locked; then the lock goes. Never changes the exit code."""
    summary = endactions.Summary(
        code=code,
        meaning=meaning,  # the summary line's own words: a run that paid anything never says "nothing submitted"
        manifest=session.manifest_path,
        directory=session.directory,
        counts=session.counts,
        figures=session.figures,
        failures=session.failures,
    )
    try:
        proxy, ca_bundle = session.way
        finish.at_end(session.end, summary, session.out, key=session.key, proxy=proxy, ca_bundle=ca_bundle)
    except Exception as exc:  # a bug in the end actions must not lose the run's exit code or its summary line
        session.out.error(f"the end-of-run actions failed: {type(exc).__name__}: {exc}", event="end_actions_error")
    finally:
        session.hold.release()
