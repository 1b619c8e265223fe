"""The command line: parse arguments, call one function, map BatchgenError to an exit code.

Nothing imports this module. It knows nothing of HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import __version__, config, manifest, report, runner
from .callbacks import parse_listen
from .config import RunSettings
from .errors import BatchgenError, ManifestError, UsageError
from .progress import Reporter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Turn a manifest of prompts into a folder of images from imagen4-ultra, resumably.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check manifests; print every problem; exit 0 or 2")
    validate.add_argument("manifests", nargs="+", metavar="MANIFEST")

    run = commands.add_parser(
        "run",
        help="the main job: submit, poll, download, record; resumes DIR",
        description="Submit every item of MANIFEST, poll, download into DIR, and record it "
        "all in DIR/results.json. Rerun the same command to resume.",
    )
    _add_run_arguments(run)

    status = commands.add_parser("status", help="what the ledger of DIR says")
    status.add_argument("directory", metavar="DIR")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    contact = commands.add_parser("report", help="write DIR/index.html, a contact sheet of the images")
    contact.add_argument("directory", metavar="DIR")

    sim = commands.add_parser("sim", help="run the simulated service on loopback, with fault injection")
    _add_sim_arguments(sim)
    return parser


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (images and results.json)")
    p.add_argument("--api-base", metavar="URL", help="the service's base URL (env BATCHGEN_API_BASE)")
    p.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the API key from this file (otherwise env BATCHGEN_API_KEY; never a flag value)",
    )
    p.add_argument("--simulate", action="store_true", help="run against the built-in simulator; no key needed")
    p.add_argument(
        "--concurrency", type=_positive_int, default=8, metavar="N", help="most tasks in flight at once (default 8)"
    )
    p.add_argument(
        "--create-rate",
        default="20/10",
        metavar="N/SECONDS",
        help="most createTask calls per window (default 20/10, the API family's limit)",
    )
    p.add_argument(
        "--poll-rate", type=_positive_float, default=8.0, metavar="N", help="most status queries per second (default 8)"
    )
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.5,
        metavar="SECONDS",
        help="first interval between status queries of a task; x3 after 30 intervals, x8 after 120 (default 2.5)",
    )
    p.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        metavar="N",
        help="submissions per item for transient failures (default 3)",
    )
    p.add_argument(
        "--task-timeout",
        type=_positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="stop waiting for one task after this; it stays resumable (default 1800)",
    )
    p.add_argument("--retry-failed", action="store_true", help="also resubmit items that failed for good earlier")
    p.add_argument(
        "--adopt-ledger",
        action="store_true",
        help="continue DIR's ledger although another manifest (by file name) made it",
    )
    p.add_argument("--limit", type=_non_negative_int, metavar="N", help="submit at most N new tasks in this run")
    p.add_argument(
        "--max-runtime",
        type=_positive_float,
        metavar="SECONDS",
        help="after this long, submit nothing more, save state and exit 5",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted; contact nothing")
    p.add_argument("--callback-url", metavar="URL", help="sent as callBackUrl (https, or http to loopback)")
    p.add_argument(
        "--callback-listen",
        metavar="HOST:PORT",
        help="receive the callbacks here for the run's duration; they trigger an immediate status query",
    )
    p.add_argument("--report", action="store_true", help="write DIR/index.html at the end of the run")
    p.add_argument(
        "--metrics-file", metavar="PATH", help="write the run's figures as a Prometheus textfile (for node_exporter)"
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--verbose", action="store_true", help="also debug lines")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="API port (default 8080; 0 for a free one)")
    p.add_argument("--files-port", type=int, default=0, help="port of the result-file origin (default: free)")
    p.add_argument("--api-key", help="the only key accepted (default: any non-empty Bearer token)")
    p.add_argument("--latency", type=float, default=30.0, help="seconds from creation to result (default 30)")
    p.add_argument("--jitter", type=float, default=5.0, help="+/- seconds around --latency (default 5)")
    p.add_argument("--results-per-task", type=int, default=1)
    p.add_argument("--image-scale", type=float, default=1.0, help="1.0 = real 2K sizes (default)")
    p.add_argument("--rate", default="20/10", help="creates per window, N/SECONDS, or 'none' (default 20/10)")
    p.add_argument("--capacity", type=int, help="429 beyond this many tasks in flight")
    p.add_argument("--poll-limit", help="429 beyond N status queries per window, N/SECONDS (default: none)")
    p.add_argument("--quota", type=int, help="403 insufficient_user_quota after this many paid creates")
    p.add_argument("--body-limit", type=int, default=1024 * 1024, help="413 beyond this many bytes")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of tasks that end in fail")
    p.add_argument("--transient-share", type=float, default=0.5, help="share of failures that are transient")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of API requests answered 500")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of API requests dropped unanswered")
    p.add_argument("--truncate-rate", type=float, default=0.0, help="share of downloads cut short")
    p.add_argument("--html-rate", type=float, default=0.0, help="share of downloads answered with HTML")
    p.add_argument("--null-window", type=float, default=0.0, help="seconds of 'recordInfo is null' after create")
    p.add_argument("--url-ttl", type=float, default=3600.0, help="seconds a result URL stays valid")
    p.add_argument("--expired-url-rate", type=float, default=0.0, help="share of result URLs already expired")
    p.add_argument("--http200-errors", action="store_true", help="business errors with HTTP 200")
    p.add_argument("--envelope-429", choices=["relay", "business", "gateway", "empty", "mixed"], default="relay")
    p.add_argument("--retry-after", type=float, help="send Retry-After on 429 (the real service does not)")
    p.add_argument("--response-delay", type=float, default=0.0, help="seconds added to every API answer")
    p.add_argument("--random-seed", type=int, help="for repeatable faults")


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


def cmd_validate(args: argparse.Namespace) -> int:
    problems = 0
    for path in args.manifests:
        try:
            items = manifest.load(path)
        except ManifestError as exc:
            problems += len(exc.problems)
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        print(f"{path}: {len(items)} item{'s' if len(items) != 1 else ''}, valid")
    if problems:
        print(f"{problems} problem{'s' if problems != 1 else ''} found; nothing would be submitted", file=sys.stderr)
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
        callback_url=callback,
        callback_listen=args.callback_listen,
        log_format=args.log_format,
        quiet=args.quiet,
        verbose=args.verbose,
        progress=not args.no_progress,
    )


def cmd_run(args: argparse.Namespace) -> int:
    warnings: list[str] = []
    settings = settings_from(args, os.environ, warnings)
    reporter = Reporter(
        fmt=settings.log_format,
        quiet=settings.quiet,
        verbose=settings.verbose,
        progress=settings.progress,
        secret=settings.api_key.value if settings.api_key else None,
    )
    for warning in warnings:
        reporter.warning(warning)
    if settings.dry_run:
        return runner.dry_run(settings, reporter)
    try:
        outcome = asyncio.run(runner.run(settings, reporter))
    finally:
        reporter.close()
    runner.final_report(outcome, settings, reporter)
    if args.metrics_file:
        report.write_metrics(
            Path(args.metrics_file),
            manifest=settings.manifest.name,
            counts=outcome.counts,
            figures=runner.figures(outcome),
        )
    if args.report:
        reporter.info(f"contact sheet: {report.write_report(settings.out)}")
    return outcome.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    doc = report.status(Path(args.directory))
    print(json.dumps(doc, indent=1, ensure_ascii=False) if args.json else report.status_text(doc))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(report.write_report(Path(args.directory)))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import SimConfig, Simulator

    rate = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    config = SimConfig(
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
            async with Simulator(config) as sim:
                key = "any non-empty Bearer token" if config.api_key is None else "the --api-key given"
                print(
                    f"batchgen sim: api={sim.api_url} files={sim.files_url} stats={sim.api_url}/__sim/stats "
                    f"(accepts {key}; Ctrl-C to stop)",
                    flush=True,
                )
                await stop.wait()
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc

    asyncio.run(serve())
    return 0


COMMANDS = {"validate": cmd_validate, "run": cmd_run, "status": cmd_status, "report": cmd_report, "sim": cmd_sim}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # inside: a Ctrl-C this early is exit 130 too, not a traceback
        return COMMANDS[args.command](args)
    except ManifestError as exc:
        print(exc, file=sys.stderr)  # one line per problem, each starting with its file:line
        return exc.exit_code
    except BatchgenError as exc:
        print(f"batchgen: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
