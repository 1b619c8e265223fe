"""The command line's grammar: every subcommand, option and value type, the exit codes for --help, and the
parser's own error (FlagError, exit 2) — no behaviour, which is cli.py's.

Kept apart so that `batchgen completion` and the help texts come from the one parser the CLI uses. `run`'s
options are args_run.py's, the simulator's args_sim.py's, the value types argtypes.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any, NoReturn

from . import __version__
from .args_run import add_models_dir_argument, add_price_argument, add_run_arguments, add_way_arguments
from .args_sim import add_sim_arguments
from .argtypes import DIRECTORY, FILE, complete, parse_rate
from .errors import ExitCode, UsageError

__all__ = ["EXIT_CODES", "FlagError", "Parser", "build_parser", "exit_meaning", "parse_rate"]

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


def build_parser() -> Parser:
    parser = Parser(
        prog="batchgen",
        description="Turn a manifest of prompts into a folder of images from imagen4-ultra, resumably.",
        epilog="Run `batchgen COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_validate_command(commands)
    _add_run_command(commands)
    _add_reading_commands(commands)
    _add_models_command(commands)
    _add_review_command(commands)
    _add_sim_command(commands)
    _add_jobs_command(commands)
    _add_doctor_command(commands)
    _add_completion_command(commands)
    return parser


def _add_validate_command(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check manifests; print every problem; exit 0 or 2",
        description="Check MANIFEST files without sending anything: every problem is printed as file:line: item: "
        "field: what is wrong. Exit 0 when all are valid, 2 otherwise.",
    )
    complete(validate.add_argument("manifests", nargs="+", metavar="MANIFEST", help="a YAML or CSV manifest"), FILE)
    add_models_dir_argument(validate)
    validate.add_argument("--model", metavar="NAME", help="check every item as if it named model NAME")
    add_price_argument(validate)
    validate.add_argument(
        "--name", metavar="TEMPLATE", default="{id}", help="also check the file names `run --name` would make"
    )
    complete(
        validate.add_argument("--out", metavar="DIR", help="also check the whole paths the files would have in DIR"),
        DIRECTORY,
    )


def _add_run_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="the main job: submit, poll, download, record; resumes DIR",
        description="Submit every item of MANIFEST, poll, download into DIR, and record it all in "
        "DIR/results.json. Rerun the same command to resume: nothing is paid for twice.",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run)
    add_way_arguments(run)


def _add_reading_commands(commands: Any) -> None:
    """`status` and `report`: what DIR's ledger says, as text or JSON, and as a contact sheet."""
    status = commands.add_parser(
        "status",
        help="what the ledger of DIR says",
        description="Counts by state, each failed item with its reason, pending and submitted items with their "
        "task ids, items in doubt and items no longer in the manifest, from DIR/results.json.",
    )
    complete(status.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    contact = commands.add_parser(
        "report",
        help="write DIR/index.html, a contact sheet of the images",
        description="Write DIR/index.html: a static page of the run's images, prompts and failures that works "
        "from file:// with no network.",
    )
    complete(contact.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)


def _add_sim_command(commands: Any) -> None:
    sim = commands.add_parser(
        "sim",
        help="run the simulated service on loopback, with fault injection",
        description="Serve the jobs API and its result files on loopback, as the real service behaves, with "
        "knobs for its faults. Ctrl-C stops it.",
    )
    add_sim_arguments(sim)


def _add_jobs_command(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="write out the nightly job files (cron, systemd) or the sample manifests",
        description="Write out files shipped inside batchgen: `install` the nightly job (nightly.sh, its env "
        "file, a crontab, a systemd service and timer), `samples` the sample manifests.",
    )
    jobs.add_argument("what", choices=["install", "samples"], help="install: the job files; samples: manifests")
    complete(jobs.add_argument("directory", metavar="DIR", help="where to write them (created)"), DIRECTORY)
    jobs.add_argument("--force", action="store_true", help="overwrite files that differ from the shipped ones")


def _add_doctor_command(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check the way to the service, one line per step with the fix; pays nothing",
        description="Check the way to the service step by step: name resolution, the proxy chosen for the API "
        "and for a result host, TCP, TLS (who issued the certificate), the key (a harmless recordInfo for a "
        "made-up task id), the clock against the server's, the state folder, and DIR. Nothing is created or paid.",
        epilog="exit 0 every check passed; 3 the way or the key is refused; 1 the service cannot be reached; 2 usage",
    )
    doctor.add_argument("--api-base", metavar="URL", help="the service's base URL (env BATCHGEN_API_BASE)")
    complete(doctor.add_argument("--api-key-file", metavar="PATH", help="the API key's file (else env)"), FILE)
    complete(doctor.add_argument("--out", metavar="DIR", help="also check that DIR is writable"), DIRECTORY)
    add_way_arguments(doctor)
    doctor.add_argument(
        "--notify",
        action="store_true",
        help="also send a test message to env BATCHGEN_NOTIFY's URLs and a test ping to BATCHGEN_PING, through "
        "the same proxy and CA as a run",
    )


def _add_completion_command(commands: Any) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script generated from batchgen's own parser (needs the `completion` "
        "extra: pip install 'batchgen[completion]'). See docs/running.md for where to put it.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")


def _add_review_command(commands: Any) -> None:
    review = commands.add_parser(
        "review",
        help="serve DIR's contact sheet on loopback with approve / reject controls",
        description="Serve DIR's contact sheet with approve and reject controls (keys a, r; arrows move). The "
        "printed URL carries a per-session token. Each decision is appended to DIR/.batchgen/decisions.jsonl at "
        "once, without DIR's lock, so review works while a run goes on; `run --reroll` generates the rejected "
        "again. Ctrl-C stops it.",
    )
    complete(review.add_argument("directory", metavar="DIR", help="a run's output directory"), DIRECTORY)
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


def _add_models_command(commands: Any) -> None:
    cards = commands.add_parser(
        "models",
        help="list the model cards, or show one model's fields",
        description="Without NAME: every model batchgen knows (built-in cards and yours), with its successor and "
        "sunset date. With NAME: that model's fields, what each accepts, and the rules between fields.",
    )
    cards.add_argument("name", nargs="?", metavar="NAME", help="a model, e.g. nano-banana-pro")
    add_models_dir_argument(cards)


def _exit_code_epilog() -> str:
    lines = ["exit codes (the most severe wins, in this order):"]
    for code, meaning in EXIT_CODES.items():
        lines.append(f"  {'128+N' if code == ExitCode.SIGNAL else int(code):<6} {meaning}")
    return "\n".join(lines)
