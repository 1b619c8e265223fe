"""What the user sees while a run goes: a tqdm bar on a terminal; off a terminal (cron), no bar and no
carriage returns, but a one-line summary every 30 s and at the end; `--log-format json`, one JSON object a line.

One small interface (`Reporter`) so the engine never cares which. Every line passes through `redact`, so the
API key cannot reach the output even by accident, and every message through `escapes`, so outside text cannot
drive the terminal or split a record in two.

Log lines carry a timestamp (a cron log is read the next morning): text lines the local time with its UTC
offset, JSON lines `ts` in UTC. Every JSON line has an `event`. A closed stderr (a reader that went away) never
stops a run: the lines are dropped from then on.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

from .config import redact
from .errors import ExitCode
from .escapes import visible, visible_json

SUMMARY_EVERY = 30.0  # seconds between summary lines off a terminal


class Reporter:
    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        fmt: str = "text",
        quiet: bool = False,
        verbose: bool = False,
        progress: bool = True,
        secret: str | Sequence[str] | None = None,
    ) -> None:
        # sys.stderr is None when Python started with fd 2 closed (`2>&-`): the lines go nowhere, the run goes on
        self.stream = stream or sys.stderr or open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        self.fmt = fmt
        self.tty = self.stream.isatty()
        self._bar: tqdm[Any] | None = None
        self._closed_pipe = False
        self._last_summary = time.monotonic()
        self.configure(quiet=quiet, verbose=verbose, progress=progress, secret=secret)

    def configure(self, *, quiet: bool, verbose: bool, progress: bool, secret: str | Sequence[str] | None) -> None:
        """Settle what the flags say, once they are all known (error lines may come before that)."""
        self.quiet = quiet
        self.verbose = verbose
        self._secret = secret
        self._want_bar = progress and self.tty and not quiet and self.fmt == "text"

    # ------------------------------------------------------------ lines

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def info(self, message: str, **fields: Any) -> None:
        if not self.quiet:
            self._emit("info", message, fields)

    def debug(self, message: str, **fields: Any) -> None:
        if self.verbose:
            self._emit("debug", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        event = fields.pop("event", "log")
        if self.fmt == "json":
            # Masked before the line is made, never after: a short secret ("1234", "true", "msg") masked in the
            # finished line turned a figure or a key into a bare **** and the line into no JSON.
            record = {"ts": utc_timestamp(), "level": level, "event": event, "msg": message, **fields}
            self.write_line(visible_json(json.dumps(self._masked(record), ensure_ascii=False)))
            return
        message = visible(message)  # text from the service or a manifest: never a control, one record a line
        said = f"batchgen: {message}" if level in ("info", "debug") else f"batchgen: {level}: {message}"
        self.write_line(self.redact(f"{local_timestamp()} {said}"))

    def _masked(self, value: Any) -> Any:
        """A JSON line's value with every text in it redacted: keys and figures (numbers, true, null) are
        batchgen's own and stay as they are; anything else is shown as its text (json.dumps' default=str)."""
        if isinstance(value, dict):
            return {str(key): self._masked(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact(value if isinstance(value, str) else str(value))

    def write_line(self, line: str) -> None:
        """One line on the stream, unchanged (the caller formats and redacts it); a closed pipe drops it."""
        if self._closed_pipe:
            return
        try:
            if self._bar is not None:
                self._bar.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)
        except OSError as exc:  # BrokenPipeError, or EPIPE from a lower layer: the reader is gone
            if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
                raise
            self._closed_pipe = True

    # ------------------------------------------------------------ progress

    def start(self, total: int) -> None:
        if self._want_bar and total:
            from tqdm import tqdm  # only for a bar on a terminal: cron's runs never load it (1.6 MB)

            self._bar = tqdm(total=total, unit="img", file=self.stream, dynamic_ncols=True, leave=True)

    def update(self, counts: dict[str, int], *, in_flight: int, limit: int) -> None:
        """Refresh the bar; off a terminal, print a summary line every SUMMARY_EVERY seconds."""
        finished = counts.get("succeeded", 0) + counts.get("failed", 0)
        if self._bar is not None:
            self._bar.n = finished
            self._bar.set_postfix_str(
                f"ok={counts.get('succeeded', 0)} failed={counts.get('failed', 0)} in-flight={in_flight}/{limit}",
                refresh=False,
            )
            self._bar.refresh()
            return
        if time.monotonic() - self._last_summary >= SUMMARY_EVERY:
            self.summary(counts, in_flight=in_flight, limit=limit)

    def summary(self, counts: dict[str, int], **extra: Any) -> None:
        self._last_summary = time.monotonic()
        if self.quiet or self._bar is not None:
            return
        text = counts_text(counts)
        if "in_flight" in extra:
            text += f"; in flight {extra['in_flight']}/{extra['limit']}"
        self._emit("info", text, {"event": "progress", "counts": counts, **extra})

    def final(self, counts: dict[str, int] | None, figures: dict[str, Any], meaning: str) -> None:
        """The run's last line, on every exit path: the counts (when the run got that far) and its figures.

        Text: one line for a person, left out under --quiet after a normal run (exit 0, 1 or 5). JSON: always,
        for the machine that reads the log.
        """
        code = figures["exit_code"]
        normal = code in (
            ExitCode.OK,
            ExitCode.FAILED,
            ExitCode.INCOMPLETE,
        )  # done; some failed for good; incomplete, the next run continues
        if self.fmt == "text" and self.quiet and normal:
            return
        parts = [counts_text(counts)] if counts is not None else []
        if "paid_creates" in figures:
            parts.append(
                ", ".join(
                    [
                        plural(figures["paid_creates"], "paid create"),
                        plural(figures["retries"], "retry", "retries"),
                        f"{figures['rate_limited']}× 429",
                        plural(figures["status_queries"], "status query", "status queries"),
                        f"{figures['seconds']:.1f} s",
                        *_spent(figures),
                    ]
                )
            )
        parts.append(f"exit {code} ({meaning})")
        fields: dict[str, Any] = {"event": "summary", **({"counts": counts} if counts is not None else {}), **figures}
        self._emit("info" if normal else "error", "; ".join(parts), fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in ("succeeded", "failed", "submitted", "pending"))


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 retry`, `2 retries`, `0 paid creates`."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def clip(text: str, width: int) -> str:
    """One line of at most `width` characters, cut at a word boundary with an ellipsis: a prompt in a listing."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    if " " in cut and line[width - 1] != " ":
        cut = cut[: cut.rfind(" ")]  # never end on half a word
    return cut.rstrip(" ,.;:-") + "…"


def local_timestamp() -> str:
    """The local time with its UTC offset, to the second: `2026-11-26 02:15:03+0800` (cron runs in local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S%z")


def utc_timestamp() -> str:
    """ISO 8601 in UTC, to the millisecond: `2026-11-25T18:15:03.123Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _spent(figures: dict[str, Any]) -> list[str]:
    """With a price: the run's spend and the ledger's spend so far (runner.spend_figures)."""
    return [f"spent {figures['spend']:g} ({figures['spend_total']:g} so far)"] if "spend" in figures else []
