"""The command line's grammar: every subcommand, option and value type, the exit codes for --help, and the
parser's own error (FlagError, exit 2) — no behaviour, which is cli.py's.

Kept apart so that `batchgen completion` and the help texts come from the one parser the CLI uses.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from . import __version__
from .config import format_rate, run_default
from .endactions import NOTIFY_ON_DEFAULT
from .errors import ExitCode, UsageError
from .sim.config import SimConfig

T = TypeVar("T", int, float)

# What each exit code means, most severe first (SPEC section 3); the run's --help epilog and summary line.
EXIT_CODES: dict[int, str] = {
    ExitCode.SOFTWARE: "an unexpected error, a bug in batchgen; the traceback is in DIR/.batchgen/crash-*.log",
    ExitCode.AUTH: "access refused: the key or the quota (401/403), or the way (a certificate, a proxy); run "
    "stopped, state saved",
    ExitCode.USAGE: "usage or manifest error; nothing submitted",
    ExitCode.LOCKED: "another run holds DIR's lock; this run did nothing",
    ExitCode.SIGNAL: "stopped by signal N (SIGINT 130, SIGTERM 143); state saved",
    ExitCode.INCOMPLETE: "incomplete: items remain pending or submitted; run again to continue",
    ExitCode.FAILED: "finished, and some items failed for good",
    ExitCode.OK: "every item succeeded",
}


def exit_meaning(code: int, paid: int = 0) -> str:
    """What an exit code means; `paid`: createTask calls of this run that were or may have been paid (a run that
    paid anything never says "nothing submitted")."""
    if code == ExitCode.USAGE and paid:
        calls = f"{paid} createTask call{'s' if paid != 1 else ''}"
        return f"usage error after {calls} paid or in doubt (in the ledger; a rerun continues them)"
    if code > ExitCode.SIGNAL:
        with contextlib.suppress(ValueError):
            return f"stopped by {signal.Signals(code - ExitCode.SIGNAL).name}; state saved"
    return EXIT_CODES.get(code, "see the README's exit codes")


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
    _add_models_dir_argument(validate)
    validate.add_argument("--model", metavar="NAME", help="check every item as if it named model NAME")
    _add_price_argument(validate)
    validate.add_argument(
        "--name", metavar="TEMPLATE", default="{id}", help="also check the file names `run --name` would make"
    )
    _complete(
        validate.add_argument("--out", metavar="DIR", help="also check the whole paths the files would have in DIR"),
        DIRECTORY,
    )

    run = commands.add_parser(
        "run",
        help="the main job: submit, poll, download, record; resumes DIR",
        description="Submit every item of MANIFEST, poll, download into DIR, and record it all in "
        "DIR/results.json. Rerun the same command to resume: nothing is paid for twice.",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(run)
    _add_way_arguments(run)

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

    _add_models_command(commands)
    _add_review_command(commands)

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

    doctor = commands.add_parser(
        "doctor",
        help="check the way to the service, one line per step with the fix; pays nothing",
        description="Check the way to the service step by step: name resolution, the proxy chosen for the API "
        "and for a result host, TCP, TLS (who issued the certificate), the key (a harmless recordInfo for a "
        "made-up task id), the clock against the server's, the state folder, and DIR. Nothing is created or paid.",
        epilog="exit 0 every check passed; 3 the way or the key is refused; 1 the service cannot be reached; 2 usage",
    )
    doctor.add_argument("--api-base", metavar="URL", help="the service's base URL (env BATCHGEN_API_BASE)")
    _complete(doctor.add_argument("--api-key-file", metavar="PATH", help="the API key's file (else env)"), FILE)
    _complete(doctor.add_argument("--out", metavar="DIR", help="also check that DIR is writable"), DIRECTORY)
    _add_way_arguments(doctor)
    doctor.add_argument(
        "--notify",
        action="store_true",
        help="also send a test message to env BATCHGEN_NOTIFY's URLs and a test ping to BATCHGEN_PING, through "
        "the same proxy and CA as a run",
    )

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script generated from batchgen's own parser (needs the `completion` "
        "extra: pip install 'batchgen[completion]'). See docs/running.md for where to put it.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
    return parser


def _add_review_command(commands: Any) -> None:
    review = commands.add_parser(
        "review",
        help="serve DIR's contact sheet on loopback with approve / reject controls",
        description="Serve DIR's contact sheet with approve and reject controls (keys a, r; arrows move). The "
        "printed URL carries a per-session token. Each decision is appended to DIR/.batchgen/decisions.jsonl at "
        "once, without DIR's lock, so review works while a run goes on; `run --reroll` generates the rejected "
        "again. Ctrl-C stops it.",
    )
    _complete(review.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)
    review.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="where to listen (port 0: a free one); default %(default)s",
    )
    review.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --listen address that is not loopback (other machines can then reach it)",
    )


def _exit_code_epilog() -> str:
    lines = ["exit codes (the most severe wins, in this order):"]
    for code, meaning in EXIT_CODES.items():
        lines.append(f"  {'128+N' if code == ExitCode.SIGNAL else int(code):<6} {meaning}")
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
    _add_pace_arguments(p)
    _add_item_arguments(p)
    _add_output_arguments(p)


def _add_pace_arguments(p: argparse.ArgumentParser) -> None:
    """How fast: tasks in flight, the create window, the status budget and the cold start."""
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=run_default("concurrency"),
        metavar="N",
        help="most tasks in flight at once (default %(default)s, the API family's published 100+ running tasks; "
        "a 429 teaches batchgen the real figure)",
    )
    p.add_argument(
        "--create-rate",
        default=format_rate(run_default("create_rate")),
        metavar="N/SECONDS",
        help="most createTask calls per window (default %(default)s, the API family's limit)",
    )
    p.add_argument(
        "--poll-rate",
        type=positive_number,
        default=run_default("poll_rate"),
        metavar="N",
        help="most status queries per second, in any 1-second window, all tasks together (default %(default)g)",
    )
    first = run_default("poll").first
    p.add_argument(
        "--poll-interval",
        type=positive_number,
        default=first,
        metavar="SECONDS",
        help="cold start, before any latency is known: probe the oldest task this often; 3x after 12 intervals, "
        f"8x after 48 (default %(default)g: every {first:g} s, every {3 * first:g} s after {12 * first:g} s, "
        f"every {8 * first:g} s after {48 * first:g} s); once tasks finish, the learned latencies decide",
    )
    p.add_argument(
        "--forget-service",
        action="store_true",
        help="forget what earlier runs learned about the service (limits, latencies) and start cold",
    )


def _add_item_arguments(p: argparse.ArgumentParser) -> None:
    """What is submitted, how often, and for how long."""
    p.add_argument(
        "--max-attempts",
        type=positive_int,
        default=run_default("max_attempts"),
        metavar="N",
        help="submissions per item for transient failures (default %(default)s)",
    )
    p.add_argument(
        "--task-timeout",
        type=positive_number,
        default=run_default("task_timeout"),
        metavar="SECONDS",
        help="stop waiting for one task after this; it stays resumable (default %(default)g)",
    )
    p.add_argument("--retry-failed", action="store_true", help="also resubmit items that failed for good earlier")
    p.add_argument(
        "--reroll",
        action="store_true",
        help="also generate again, as a new roll with a new seed, every item rejected in `batchgen review` "
        "(re-rolls go first under --limit)",
    )
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
    _add_money_arguments(p)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """What the run writes: file names, sidecars, callbacks, the report, metrics and logs."""
    p.add_argument(
        "--name",
        metavar="TEMPLATE",
        default=run_default("name"),
        help="file names from {id}, {seed}, {aspect_ratio}, {prompt}, matrix axes, {copy}, {date}, {n}; '/' makes "
        "subfolders inside DIR (default %(default)s)",
    )
    p.add_argument(
        "--metadata",
        choices=["none", "sidecar", "png"],
        default=run_default("metadata"),
        help="sidecar: <image file name>.json beside each image with its parameters; png: also inside each PNG "
        "as iTXt, except a PNG carrying a C2PA manifest (default %(default)s)",
    )
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
        default=run_default("log_format"),
        help="text: timestamped lines; json: one JSON object per stderr line, the summary last (default %(default)s)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("-v", "--verbose", action="store_true", help="also debug lines")
    add_end_arguments(p)


def add_end_arguments(p: argparse.ArgumentParser) -> None:
    """The night's end (finish.py): a hook, a message, a ping, on every exit path but --dry-run."""
    end = p.add_argument_group("at the end of the run (every exit but --dry-run; 120 s in all, 10 s after a signal)")
    end.add_argument(
        "--on-finish",
        action="append",
        metavar="CMD",
        help="run CMD (split like a shell would, never run by one) with the run's summary as JSON on stdin and "
        "BATCHGEN_EXIT, BATCHGEN_DIR, BATCHGEN_MANIFEST in its environment (never the key); repeatable, in order",
    )
    end.add_argument(
        "--notify",
        action="append",
        metavar="URL",
        help="send one message through an Apprise URL (mail, Slack, ntfy, json://...); prefer env BATCHGEN_NOTIFY "
        "(a URL with a token is a secret); needs pip install 'batchgen[notify]'; repeatable",
    )
    end.add_argument(
        "--notify-on",
        choices=["problem", "always"],
        default=NOTIFY_ON_DEFAULT,
        help="problem: exits 1, 2, 3, 4, 70 and 128+N, not 0 or 5; always: every run (default %(default)s)",
    )
    end.add_argument(
        "--ping",
        metavar="URL",
        help="healthchecks-style monitor: URL/start at the start, URL for exits 0, 1 and 5, URL/<exit code> "
        "otherwise; prefer env BATCHGEN_PING",
    )


def _add_money_arguments(p: argparse.ArgumentParser) -> None:
    """`run`'s model cards, prices and spending cap."""
    _add_models_dir_argument(p)
    _add_price_argument(p)
    p.add_argument(
        "--max-spend",
        metavar="AMOUNT",
        help="create nothing that would take this run's paid creates x their price past AMOUNT (needs --price "
        "for every model); what is left waits for the next run (exit 5)",
    )


def _add_models_command(commands: Any) -> None:
    cards = commands.add_parser(
        "models",
        help="list the model cards, or show one model's fields",
        description="Without NAME: every model batchgen knows (built-in cards and yours), with its successor and "
        "sunset date. With NAME: that model's fields, what each accepts, and the rules between fields.",
    )
    cards.add_argument("name", nargs="?", metavar="NAME", help="a model, e.g. nano-banana-pro")
    _add_models_dir_argument(cards)


def _add_models_dir_argument(p: argparse.ArgumentParser) -> None:
    _complete(
        p.add_argument(
            "--models-dir",
            metavar="DIR",
            help="model cards that add or replace models (env BATCHGEN_MODELS_DIR; default "
            "$XDG_CONFIG_HOME/batchgen/models, else ~/.config/batchgen/models)",
        ),
        DIRECTORY,
    )


# ---------------------------------------------------------------- the way to the service (proxies, CAs)


def _add_way_arguments(p: argparse.ArgumentParser) -> None:
    """--proxy and --ca-bundle, for `run` and `doctor` (SPEC §1a)."""
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="http://[user:password@]host:port for every request (env BATCHGEN_PROXY; over HTTPS_PROXY and "
        "HTTP_PROXY; NO_PROXY still applies). Prefer the environment for credentials: a flag is visible in ps",
    )
    _complete(
        p.add_argument(
            "--ca-bundle",
            metavar="PATH",
            help="trust only the CA certificates in this PEM file (env BATCHGEN_CA_BUNDLE; default: the system's "
            "CAs, SSL_CERT_FILE and SSL_CERT_DIR honoured)",
        ),
        FILE,
    )


def _add_price_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--price",
        metavar="AMOUNT",
        help="price of one image, any currency (env BATCHGEN_PRICE), for every model or per model "
        "(imagen4-ultra=0.06,nano-banana-pro=0.13): validate shows items x price as an upper bound, --dry-run "
        "the estimated cost of its paid creates, the summary and status the cost per model",
    )


def _value_type(parse: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse `type=`: `parse` the text, accept it if `ok`; otherwise a message in the user's words (never
    argparse's "invalid positive_int value")."""

    def check(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return check


# NaN fails every comparison, so no range below admits it; inf is refused wherever a bound is open.
positive_int = _value_type(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _value_type(int, lambda v: v >= 0, "an integer >= 0")
positive_number = _value_type(float, lambda v: 0 < v < math.inf, "a number > 0")
non_negative_number = _value_type(float, lambda v: 0 <= v < math.inf, "a number >= 0")
share = _value_type(float, lambda v: 0 <= v <= 1, "a share between 0 and 1")
port = _value_type(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")


def _add_sim_arguments(p: argparse.ArgumentParser) -> None:
    sim = SimConfig()  # the knobs' defaults live in SimConfig (but --port: the command's own 8080)
    _add_models_dir_argument(p)  # the simulated service serves the user's model cards too
    p.add_argument("--host", default=sim.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=port, default=8080, help="API port (default %(default)s; 0 for a free one)")
    p.add_argument(
        "--files-port", type=port, default=sim.files_port, help="port of the result-file origin (default: free)"
    )
    p.add_argument("--api-key", help="the only key accepted (default: any non-empty Bearer token)")
    knobs: dict[str, tuple[Callable[[str], Any], str]] = {
        "latency": (non_negative_number, "seconds from creation to result (default %(default)g)"),
        "jitter": (non_negative_number, "+/- seconds around --latency (default %(default)g)"),
        "results_per_task": (positive_int, "result URLs per task (default %(default)s)"),
        "image_scale": (positive_number, "1.0 = real 2K sizes (default %(default)g)"),
    }
    for name, (kind, text) in knobs.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(sim, name), help=text)
    rate = format_rate(sim.rate) if sim.rate else "none"
    p.add_argument("--rate", default=rate, help="creates per window, N/SECONDS, or 'none' (default %(default)s)")
    p.add_argument("--capacity", type=positive_int, help="429 beyond this many tasks in flight")
    p.add_argument("--poll-limit", help="429 beyond N status queries per window, N/SECONDS (default: none)")
    p.add_argument("--quota", type=non_negative_int, help="403 insufficient_user_quota after this many paid creates")
    p.add_argument("--body-limit", type=positive_int, default=sim.body_limit, help="413 beyond this many bytes")
    shares = {
        "fail_rate": "share of tasks that end in fail",
        "transient_share": "share of failures that are transient",
        "error_rate": "share of API requests answered 500",
        "drop_rate": "share of API requests dropped unanswered",
        "truncate_rate": "share of downloads cut short",
        "html_rate": "share of downloads answered with HTML",
    }
    for name, text in shares.items():
        p.add_argument("--" + name.replace("_", "-"), type=share, default=getattr(sim, name), help=text)
    p.add_argument(
        "--null-window",
        type=non_negative_number,
        default=sim.null_window,
        help="seconds of 'recordInfo is null' after create",
    )
    p.add_argument("--url-ttl", type=non_negative_number, default=sim.url_ttl, help="seconds a result URL stays valid")
    p.add_argument(
        "--expired-url-rate", type=share, default=sim.expired_url_rate, help="share of result URLs already expired"
    )
    p.add_argument("--http200-errors", action="store_true", help="business errors with HTTP 200")
    p.add_argument(
        "--png-trailer",
        choices=["none", "garbage", "double_iend"],
        default=sim.png_trailer,
        help="served PNGs are followed by bytes after IEND, or by a second IEND (default %(default)s)",
    )
    p.add_argument(
        "--envelope-429",
        choices=["relay", "business", "gateway", "empty", "mixed"],
        default=sim.envelope_429,
        help="how a 429 is wrapped (default %(default)s: the task relay's own envelope)",
    )
    p.add_argument(
        "--capacity-envelope-429",
        choices=["relay", "business", "gateway", "empty", "mixed"],
        help="how a 429 for being full (--capacity) is wrapped (default: as --envelope-429)",
    )
    p.add_argument(
        "--retry-after", type=non_negative_number, help="send Retry-After on 429 (the real service does not)"
    )
    p.add_argument(
        "--response-delay",
        type=non_negative_number,
        default=sim.response_delay,
        help="seconds added to every API answer",
    )
    p.add_argument(
        "--unsupported-model",
        action="append",
        dest="unsupported_models",
        metavar="MODEL",
        help="answer creates for MODEL as for a model that is gone (repeat for more)",
    )
    p.add_argument(
        "--unsupported-answer",
        choices=["400", "price", "503"],
        default=sim.unsupported_answer,
        help="how: 400 'unsupported model', 400 model_price_error, or the gateway's 503 'no channel' "
        "(default %(default)s)",
    )
    p.add_argument("--wrong-extension", action="store_true", help="result URLs and types say PNG whatever the bytes")
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
