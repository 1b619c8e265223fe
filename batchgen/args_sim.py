"""`batchgen sim`'s options: the simulated service's knobs, their defaults read from SimConfig."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .args_run import add_models_dir_argument
from .argtypes import non_negative_int, non_negative_number, port, positive_int, positive_number, share
from .config import format_rate
from .sim.config import SimConfig


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    sim = SimConfig()  # the knobs' defaults live in SimConfig (but --port: the command's own 8080)
    add_models_dir_argument(p)  # the simulated service serves the user's model cards too
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
    _add_answer_arguments(p, sim)


def _add_answer_arguments(p: argparse.ArgumentParser, sim: SimConfig) -> None:
    """How the simulated service's answers look: null windows, URL lifetimes, envelopes, gone models."""
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
