"""`run`'s options (and those `validate` and `doctor` share with it): where, how fast, what is submitted, what
is written, the night's end, money, and the way to the service. Grammar only; the defaults come from config.py."""

from __future__ import annotations

import argparse

from .argtypes import DIRECTORY, FILE, complete, non_negative_int, positive_int, positive_number
from .config import format_rate, run_default
from .endactions import NOTIFY_ON_DEFAULT


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    complete(p.add_argument("manifest", metavar="MANIFEST", help="a YAML or CSV manifest"), FILE)
    complete(
        p.add_argument(
            "--out", required=True, metavar="DIR", help="output directory: images, results.json, .batchgen/"
        ),
        DIRECTORY,
    )
    p.add_argument("--api-base", metavar="URL", help="the service's base URL (env BATCHGEN_API_BASE)")
    complete(
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
    complete(
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
    add_models_dir_argument(p)
    add_price_argument(p)
    p.add_argument(
        "--max-spend",
        metavar="AMOUNT",
        help="create nothing that would take this run's paid creates x their price past AMOUNT (needs --price "
        "for every model); what is left waits for the next run (exit 5)",
    )


def add_models_dir_argument(p: argparse.ArgumentParser) -> None:
    complete(
        p.add_argument(
            "--models-dir",
            metavar="DIR",
            help="model cards that add or replace models (env BATCHGEN_MODELS_DIR; default "
            "$XDG_CONFIG_HOME/batchgen/models, else ~/.config/batchgen/models)",
        ),
        DIRECTORY,
    )


# ---------------------------------------------------------------- the way to the service (proxies, CAs)


def add_way_arguments(p: argparse.ArgumentParser) -> None:
    """--proxy and --ca-bundle, for `run` and `doctor` (SPEC §1a)."""
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="http://[user:password@]host:port for every request (env BATCHGEN_PROXY; over HTTPS_PROXY and "
        "HTTP_PROXY; NO_PROXY still applies). Prefer the environment for credentials: a flag is visible in ps",
    )
    complete(
        p.add_argument(
            "--ca-bundle",
            metavar="PATH",
            help="trust only the CA certificates in this PEM file (env BATCHGEN_CA_BUNDLE; default: the system's "
            "CAs, SSL_CERT_FILE and SSL_CERT_DIR honoured)",
        ),
        FILE,
    )


def add_price_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--price",
        metavar="AMOUNT",
        help="price of one image, any currency (env BATCHGEN_PRICE), for every model or per model "
        "(imagen4-ultra=0.06,nano-banana-pro=0.13): validate shows items x price as an upper bound, --dry-run "
        "the estimated cost of its paid creates, the summary and status the cost per model",
    )
