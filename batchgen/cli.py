"""The command line: parse arguments, call one function, map BatchgenError to an exit code.

Nothing imports this module. It knows nothing of HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from . import __version__, manifest
from .errors import BatchgenError, ManifestError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgen",
        description="Turn a manifest of prompts into a folder of images from imagen4-ultra, resumably.",
    )
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check manifests; print every problem; exit 0 or 2")
    validate.add_argument("manifests", nargs="+", metavar="MANIFEST")

    sim = commands.add_parser("sim", help="run the simulated service on loopback, with fault injection")
    _add_sim_arguments(sim)
    return parser


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


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim import SimConfig, Simulator

    rate = None if args.rate.strip().lower() in ("none", "off", "0") else parse_rate(args.rate, "--rate")
    config = SimConfig(
        host=args.host, port=args.port, files_port=args.files_port, api_key=args.api_key,
        latency=args.latency, jitter=args.jitter, results_per_task=args.results_per_task,
        image_scale=args.image_scale, rate=rate, capacity=args.capacity, quota=args.quota,
        body_limit=args.body_limit, fail_rate=args.fail_rate, transient_share=args.transient_share,
        error_rate=args.error_rate, drop_rate=args.drop_rate, truncate_rate=args.truncate_rate,
        html_rate=args.html_rate, null_window=args.null_window, url_ttl=args.url_ttl or None,
        http200_errors=args.http200_errors, envelope_429=args.envelope_429, retry_after=args.retry_after,
        response_delay=args.response_delay, random_seed=args.random_seed,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with Simulator(config) as sim:
                key = "any non-empty Bearer token" if config.api_key is None else "the --api-key given"
                print(f"batchgen sim: api={sim.api_url} files={sim.files_url} stats={sim.api_url}/__sim/stats "
                      f"(accepts {key}; Ctrl-C to stop)", flush=True)
                await stop.wait()
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc

    asyncio.run(serve())
    return 0


COMMANDS = {"validate": cmd_validate, "sim": cmd_sim}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BatchgenError as exc:
        print(f"batchgen: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
