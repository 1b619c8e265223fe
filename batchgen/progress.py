"""What the user sees while a run goes: a tqdm bar on a terminal; off a terminal (cron), no bar and no
carriage returns, but a one-line summary every 30 s and at the end; `--log-format json`, one JSON object a line.

One small interface (`Reporter`) so the engine never cares which. Every line passes through `redact`, so the
API key cannot reach the output even by accident.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from .config import redact

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
        secret: str | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.fmt = fmt
        self.quiet = quiet
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self._secret = secret
        self._bar: tqdm[Any] | None = None
        self._want_bar = progress and self.tty and not quiet and fmt == "text"
        self._last_summary = time.monotonic()

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
        if self.fmt == "json":
            record = {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "level": level,
                "msg": message,
                **fields,
            }
            line = json.dumps(record, ensure_ascii=False, default=str)
        else:
            line = f"batchgen: {message}" if level in ("info", "debug") else f"batchgen: {level}: {message}"
        line = self.redact(line)
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    # ------------------------------------------------------------ progress

    def start(self, total: int) -> None:
        if self._want_bar and total:
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
        text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("succeeded", "failed", "submitted", "pending"))
        if "in_flight" in extra:
            text += f"; in flight {extra['in_flight']}/{extra['limit']}"
        self._emit("info", text, {"event": "progress", "counts": counts, **extra})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
