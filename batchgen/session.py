"""One invocation's session and its stdout: what the ladder (cli.py) must know to finish any exit path, and
the one way a command prints its result (`say`), so that a closed or full stdout is seen by the ladder."""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    endactions,
    finish,
    proxies,
)
from .progress import Reporter


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
    # The night's end (finish.py): the actions, what they are told, and DIR's lock kept for them.
    end: endactions.EndActions = field(default_factory=endactions.EndActions)
    manifest_path: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    hold: finish.LockHold = field(default_factory=finish.LockHold)
    way: tuple[proxies.ProxySettings | None, Path | None] = (None, None)  # the run's proxies and CA bundle
    by_model: dict[str, int] = field(default_factory=dict)  # this run's paid creates per model


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
