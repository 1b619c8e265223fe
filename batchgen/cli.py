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
from typing import Any, NoReturn

from . import __version__, config, manifest, plan, report, runner, sheet
from .callbacks import parse_listen
from .config import RunSettings
from .errors import AuthError, BatchgenError, LockedError, ManifestError, QuotaError, StorageError, UsageError
from .files import state_dir
from .progress import Reporter, plural, utc_timestamp

EX_SOFTWARE = 70  # sysexits.h: an internal software error, i.e. a bug in batchgen
EX_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a program its reader stopped reading

# What each exit code means, most severe first (SPEC section 3); the run's --help epilog and summary line.
EXIT_CODES = {
    70: "an unexpected error, a bug in batchgen; the traceback is in DIR/.batchgen/crash-*.log",
    3: "the service refused the key or the quota (401/403); run stopped, state saved",
    2: "usage or manifest error; nothing submitted",
    4: "another run holds DIR's lock; this run did nothing",
    128: "stopped by signal N (SIGINT 130, SIGTERM 143); state saved",
    5: "incomplete: items remain pending or submitted; run again to continue",
    1: "finished, and some items failed for good",
    0: "every item succeeded",
}


def exit_meaning(code: int) -> str:
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"stopped by {signal.Signals(code - 128).name}; state saved"
    return EXIT_CODES.get(code, "see the README's exit codes")


# ---------------------------------------------------------------- the parser


class FlagError(UsageError):
    """argparse found the command line wrong; `usage` is the usage text of the (sub)command."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """argparse, with no silent prefix matching (`--lim` is not `--limit`), and errors that go through the
    ladder (so a bad flag still writes the metrics file and, with --log-format json, a JSON line)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise FlagError(f"{self.prog}: {message}", self.format_usage())


FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # shtab's FILE and DIRECTORY, without importing it
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}


def _complete(action: argparse.Action, what: dict[str, str]) -> None:
    action.complete = what  # type: ignore[attr-defined]  # read by shtab for `batchgen completion`


def build_parser() -> Parser:
    parser = Parser(
        prog="batchgen",
        description="Turn a manifest of prompts into a folder of images from imagen4-ultra, resumably.",
        epilog="Run `batchgen COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check manifests; print every problem; exit 0 or 2",
        description="Check MANIFEST files without sending anything: every problem is printed as file:line: item: "
        "field: what is wrong. Exit 0 when all are valid, 2 otherwise.",
    )
    _complete(validate.add_argument("manifests", nargs="+", metavar="MANIFEST", help="a YAML or CSV manifest"), FILE)
    _add_price_argument(validate)

    run = commands.add_parser(
        "run",
        help="the main job: submit, poll, download, record; resumes DIR",
        description="Submit every item of MANIFEST, poll, download into DIR, and record it all in "
        "DIR/results.json. Rerun the same command to resume: nothing is paid for twice.",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(run)

    status = commands.add_parser(
        "status",
        help="what the ledger of DIR says",
        description="Counts by state, each failed item with its reason, pending and submitted items with their "
        "task ids, items in doubt and items no longer in the manifest, from DIR/results.json.",
    )
    _complete(status.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    contact = commands.add_parser(
        "report",
        help="write DIR/index.html, a contact sheet of the images",
        description="Write DIR/index.html: a static page of the run's images, prompts and failures that works "
        "from file:// with no network.",
    )
    _complete(contact.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)

    sim = commands.add_parser(
        "sim",
        help="run the simulated service on loopback, with fault injection",
        description="Serve the jobs API and its result files on loopback, as the real service behaves, with "
        "knobs for its faults. Ctrl-C stops it.",
    )
    _add_sim_arguments(sim)

    jobs = commands.add_parser(
        "jobs",
        help="write out the nightly job files (cron, systemd) or the sample manifests",
        description="Write out files shipped inside batchgen: `install` the nightly job (nightly.sh, its env "
        "file, a crontab, a systemd service and timer), `samples` the sample manifests.",
    )
    jobs.add_argument("what", choices=["install", "samples"], help="install: the job files; samples: manifests")
    _complete(jobs.add_argument("directory", metavar="DIR", help="where to write them (created)"), DIRECTORY)
    jobs.add_argument("--force", action="store_true", help="overwrite files that differ from the shipped ones")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script generated from batchgen's own parser (needs the `completion` "
        "extra: pip install 'batchgen[completion]'). See the README for where to put it.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
    return parser


def _exit_code_epilog() -> str:
    lines = ["exit codes (the most severe wins, in this order):"]
    for code, meaning in EXIT_CODES.items():
        lines.append(f"  {'128+N' if code == 128 else code:<6} {meaning}")
    return "\n".join(lines)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    _complete(p.add_argument("manifest", metavar="MANIFEST", help="a YAML or CSV manifest"), FILE)
    _complete(
        p.add_argument(
            "--out", required=True, metavar="DIR", help="output directory: images, results.json, .batchgen/"
        ),
        DIRECTORY,
    )
    p.add_argument("--api-base", metavar="URL", help="the service's base URL (env BATCHGEN_API_BASE)")
    _complete(
        p.add_argument(
            "--api-key-file",
            metavar="PATH",
            help="read the API key from this file (otherwise env BATCHGEN_API_KEY; never a flag value)",
        ),
        FILE,
    )
    p.add_argument("--simulate", action="store_true", help="run against the built-in simulator; no key needed")
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        metavar="N",
        help="most tasks in flight at once (default %(default)s)",
    )
    p.add_argument(
        "--create-rate",
        default="20/10",
        metavar="N/SECONDS",
        help="most createTask calls per window (default %(default)s, the API family's limit)",
    )
    p.add_argument(
        "--poll-rate",
        type=positive_number,
        default=8.0,
        metavar="N",
        help="most status queries per second, all tasks together (default %(default)g)",
    )
    first = config.PollSchedule().first
    p.add_argument(
        "--poll-interval",
        type=positive_number,
        default=first,
        metavar="SECONDS",
        help="a task's first interval between status queries; 3x after 12 intervals, 8x after 48 (default "
        f"%(default)g: every {first:g} s, every {3 * first:g} s after {12 * first:g} s, every {8 * first:g} s "
        f"after {48 * first:g} s)",
    )
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=3,
        metavar="N",
        help="submissions per item for transient failures (default %(default)s)",
    )
    p.add_argument(
        "--task-timeout",
        type=positive_number,
        default=1800.0,
        metavar="SECONDS",
        help="stop waiting for one task after this; it stays resumable (default %(default)g)",
    )
    p.add_argument("--retry-failed", action="store_true", help="also resubmit items that failed for good earlier")
    p.add_argument(
        "--adopt-ledger",
        action="store_true",
        help="continue DIR's ledger although another manifest (by file name) made it",
    )
    p.add_argument("--limit", type=non_negative_int, metavar="N", help="submit at most N new tasks in this run")
    p.add_argument(
        "--max-runtime",
        type=positive_number,
        metavar="SECONDS",
        help="after this long, submit nothing more, save state and exit 5",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted; contact nothing")
    _add_price_argument(p)
    p.add_argument("--callback-url", metavar="URL", help="sent as callBackUrl (https, or http to loopback)")
    p.add_argument(
        "--callback-listen",
        metavar="HOST:PORT",
        help="receive the callbacks here for the run's duration; they trigger an immediate status query",
    )
    p.add_argument("--report", action="store_true", help="write DIR/index.html at the end of the run")
    _complete(
        p.add_argument(
            "--metrics-file",
            metavar="PATH",
            help="write the run's figures as a Prometheus textfile (for node_exporter), on every exit",
        ),
        FILE,
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text: timestamped lines; json: one JSON object per stderr line, the summary last (default text)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("-v", "--verbose", action="store_true", help="also debug lines")


def _add_price_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--price",
        metavar="AMOUNT",
        help="price of one image, any currency (env BATCHGEN_PRICE): validate shows items x price as an upper "
        "bound, --dry-run the estimated cost of its paid creates",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def _add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=port, default=8080, help="API port (default %(default)s; 0 for a free one)")
    p.add_argument("--files-port", type=port, default=0, help="port of the result-file origin (default: free)")
    p.add_argument("--api-key", help="the only key accepted (default: any non-empty Bearer token)")
    p.add_argument(
        "--latency", type=non_negative_number, default=30.0, help="seconds from creation to result (default 30)"
    )
    p.add_argument("--jitter", type=non_negative_number, default=5.0, help="+/- seconds around --latency (default 5)")
    p.add_argument("--results-per-task", type=positive_int, default=1, help="result URLs per task (default 1)")
    p.add_argument("--image-scale", type=positive_number, default=1.0, help="1.0 = real 2K sizes (default)")
    p.add_argument("--rate", default="20/10", help="creates per window, N/SECONDS, or 'none' (default 20/10)")
    p.add_argument("--capacity", type=positive_int, help="429 beyond this many tasks in flight")
    p.add_argument("--poll-limit", help="429 beyond N status queries per window, N/SECONDS (default: none)")
    p.add_argument("--quota", type=non_negative_int, help="403 insufficient_user_quota after this many paid creates")
    p.add_argument("--body-limit", type=positive_int, default=1024 * 1024, help="413 beyond this many bytes")
    p.add_argument("--fail-rate", type=share, default=0.0, help="share of tasks that end in fail")
    p.add_argument("--transient-share", type=share, default=0.5, help="share of failures that are transient")
    p.add_argument("--error-rate", type=share, default=0.0, help="share of API requests answered 500")
    p.add_argument("--drop-rate", type=share, default=0.0, help="share of API requests dropped unanswered")
    p.add_argument("--truncate-rate", type=share, default=0.0, help="share of downloads cut short")
    p.add_argument("--html-rate", type=share, default=0.0, help="share of downloads answered with HTML")
    p.add_argument(
        "--null-window", type=non_negative_number, default=0.0, help="seconds of 'recordInfo is null' after create"
    )
    p.add_argument("--url-ttl", type=non_negative_number, default=3600.0, help="seconds a result URL stays valid")
    p.add_argument("--expired-url-rate", type=share, default=0.0, help="share of result URLs already expired")
    p.add_argument("--http200-errors", action="store_true", help="business errors with HTTP 200")
    p.add_argument(
        "--envelope-429",
        choices=["relay", "business", "gateway", "empty", "mixed"],
        default="relay",
        help="how a 429 is wrapped (default relay: the task relay's own envelope)",
    )
    p.add_argument(
        "--retry-after", type=non_negative_number, help="send Retry-After on 429 (the real service does not)"
    )
    p.add_argument("--response-delay", type=non_negative_number, default=0.0, help="seconds added to every API answer")
    p.add_argument("--random-seed", type=int, help="seed for the random faults, for repeatable runs")


def parse_rate(text: str, flag: str) -> tuple[int, float]:
    """`N/SECONDS` -> (N, SECONDS)."""
    count, sep, window = text.partition("/")
    try:
        parsed = int(count), float(window or "1")
    except ValueError:
        parsed = (0, 0.0)
    if not sep and window == "":
        parsed = (parsed[0], 1.0)
    if parsed[0] < 1 or parsed[1] <= 0:
        raise UsageError(f"{flag}: expected N/SECONDS with N >= 1 and SECONDS > 0, e.g. 20/10; got {text!r}")
    return parsed


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
        return COMMANDS[args.command](args, session)
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
    if session.metrics_file:
        path = Path(session.metrics_file)
        try:
            report.write_metrics(path, manifest=session.manifest, counts=session.counts, figures=figures)
        except (OSError, BatchgenError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            out.error(f"--metrics-file {path}: cannot write it: {reason}", event="metrics_error")
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
        print(f"{path}: {plan.item_counts(loaded.listed, count)}, valid{plan.upper_bound(count, price)}")
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
        max_attempts=args.max_attempts,
        task_timeout=args.task_timeout,
        retry_failed=args.retry_failed,
        adopt_ledger=args.adopt_ledger,
        limit=args.limit,
        max_runtime=args.max_runtime,
        dry_run=args.dry_run,
        price=plan.price_from(args.price, env),
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
        except BatchgenError as exc:  # the run's own outcome stands; the page can be made later
            out.error(f"the contact sheet could not be written: {exc}; `batchgen report {settings.out}` retries it")
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
    print(json.dumps(doc, indent=1, ensure_ascii=False) if args.json else report.status_text(doc))
    return 0


def cmd_report(args: argparse.Namespace, session: Session) -> int:
    print(sheet.write_report(Path(args.directory)))
    return 0


JOB_FILES = {"install": "jobs", "samples": "sample_manifests"}
EXECUTABLE = {"nightly.sh"}


def cmd_jobs(args: argparse.Namespace, session: Session) -> int:
    """Write out the files shipped in the package (batchgen/data/), so a pip user has them too."""
    source = resources.files("batchgen") / "data" / JOB_FILES[args.what]
    target = Path(args.directory)
    shipped = sorted((entry.name, entry.read_bytes()) for entry in source.iterdir() if entry.is_file())
    differing = [name for name, data in shipped if (target / name).exists() and (target / name).read_bytes() != data]
    if differing and not args.force:
        raise UsageError(
            f"{target}: {', '.join(differing)} already there and different; nothing was written "
            "(--force overwrites them)"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name, data in shipped:
        path = target / name
        path.write_bytes(data)
        os.chmod(path, 0o755 if name in EXECUTABLE else 0o644)  # the env example holds no secret
        print(path)
    return 0


def cmd_completion(args: argparse.Namespace, session: Session) -> int:
    try:
        import shtab
    except ImportError:
        raise UsageError(
            "shell completion needs shtab: pip install 'batchgen[completion]' (or pip install shtab)"
        ) from None
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_sim(args: argparse.Namespace, session: Session) -> int:
    from .sim import SimConfig, Simulator

    rate = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    sim_config = SimConfig(
        host=args.host,
        port=args.port,
        files_port=args.files_port,
        api_key=args.api_key,
        latency=args.latency,
        jitter=args.jitter,
        results_per_task=args.results_per_task,
        image_scale=args.image_scale,
        rate=rate,
        capacity=args.capacity,
        quota=args.quota,
        poll_limit=parse_rate(args.poll_limit, "--poll-limit") if args.poll_limit else None,
        body_limit=args.body_limit,
        fail_rate=args.fail_rate,
        transient_share=args.transient_share,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        html_rate=args.html_rate,
        null_window=args.null_window,
        url_ttl=args.url_ttl or None,
        expired_url_rate=args.expired_url_rate,
        http200_errors=args.http200_errors,
        envelope_429=args.envelope_429,
        retry_after=args.retry_after,
        response_delay=args.response_delay,
        random_seed=args.random_seed,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with Simulator(sim_config) as sim:
                key = "any non-empty Bearer token" if sim_config.api_key is None else "the --api-key given"
                print(
                    f"batchgen sim: api={sim.api_url} files={sim.files_url} stats={sim.api_url}/__sim/stats "
                    f"(accepts {key}; Ctrl-C to stop)",
                    flush=True,
                )
                await stop.wait()
        except OSError as exc:
            raise UsageError(f"cannot listen on {sim_config.host}:{sim_config.port}: {exc.strerror or exc}") from exc

    asyncio.run(serve())
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
