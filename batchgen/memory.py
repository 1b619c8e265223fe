"""What a run learned about the service, kept for the next run against it: a warm start, never a rule.

Per service (its API base, without any credentials or query in it; never the key): the creates per window it
accepted when it said 429, the tasks in flight at its first 429, and the latency quantiles of its tasks. The
next run starts its limits and its poll scheduler from them — the flags still cap them — so a nightly job
starts warm, also when each night writes to a new dated folder.

Where: `$XDG_STATE_HOME/batchgen`, else `~/.local/state/batchgen` (from $HOME), else — no writable home, as
under a bare cron — `DIR/.batchgen`. A hint only: a file that is damaged, stale (older than `MAX_AGE`), from a
newer batchgen or for another service is ignored, and a run that cannot write it goes on without.
`--simulate` keeps none; `run --forget-service` forgets it; `status` shows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .files import STATE_DIR, write_atomically
from .limits import Hints, Throttle
from .polls import MIN_FINISHED, PollScheduler, Quantiles

VERSION = 1
MAX_AGE = 30 * 86400.0  # a month-old picture of a service is no picture of it
PREFIX = "service-"


@dataclass(frozen=True, slots=True)
class ServiceMemory:
    service: str  # the API base, without credentials, query or fragment
    saved_at: float  # Unix seconds
    create_count: int | None = None  # creates per `create_seconds` the service accepted when it said 429
    create_seconds: float | None = None
    in_flight: int | None = None  # tasks in flight at its first 429
    latency: Quantiles | None = None
    tasks_seen: int = 0  # finished tasks behind the latency quantiles

    def hints(self, create_rate: tuple[int, float]) -> Hints:
        """The limits' starting points; a create count learned for another window length does not apply."""
        count = self.create_count if self.create_seconds == create_rate[1] else None
        return Hints(create_count=count, in_flight=self.in_flight)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "service": self.service,
            "saved_at": round(self.saved_at, 3),
            "create_rate": [self.create_count, self.create_seconds] if self.create_count else None,
            "in_flight_at_429": self.in_flight,
            "latency": (
                {"p05": self.latency.low, "p50": self.latency.median, "p95": self.latency.high, "n": self.tasks_seen}
                if self.latency
                else None
            ),
        }


def service_of(api_base: str) -> str:
    """The service's name as kept: scheme, host, port and path; no user, password, query or fragment."""
    parts = urlsplit(api_base.strip())
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def directory(env: Mapping[str, str], out: Path, *, create: bool = True) -> Path:
    """Where memories are kept: $XDG_STATE_HOME/batchgen, ~/.local/state/batchgen, else DIR/.batchgen.

    `create`: make the folder if missing (a run); without it (`status`), a missing one is simply named."""
    candidate = None
    if (xdg := env.get("XDG_STATE_HOME", "")) and os.path.isabs(xdg):
        candidate = Path(xdg) / "batchgen"
    elif (home := env.get("HOME", "")) and os.path.isabs(home):
        candidate = Path(home) / ".local" / "state" / "batchgen"
    if candidate is not None:
        with contextlib.suppress(OSError):
            if create:
                candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not candidate.exists() or (os.access(candidate, os.W_OK | os.X_OK) and not candidate.is_symlink()):
                return candidate
    return out / STATE_DIR


def path_for(folder: Path, api_base: str) -> Path:
    digest = hashlib.sha256(service_of(api_base).encode()).hexdigest()[:16]
    return folder / f"{PREFIX}{digest}.json"


def load(folder: Path, api_base: str, *, now: float | None = None) -> ServiceMemory | None:
    """The memory of this service, or None: none kept, damaged, stale, newer, or another service's."""
    try:
        doc = json.loads(path_for(folder, api_base).read_text(encoding="utf-8"))
        return parse(doc, service_of(api_base), time.time() if now is None else now)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def parse(doc: Any, service: str, now: float) -> ServiceMemory | None:
    """A memory document checked field by field; None unless it is whole, recent and this service's."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("service") != service:
        return None
    saved = float(doc["saved_at"])
    if not now - MAX_AGE <= saved <= now + 86400:
        return None
    count = seconds = in_flight = None
    if (rate := doc.get("create_rate")) is not None:
        count, seconds = _positive(rate[0], int), _positive(rate[1], float)
        if count is None or seconds is None:
            return None
    if doc.get("in_flight_at_429") is not None and (in_flight := _positive(doc["in_flight_at_429"], int)) is None:
        return None
    latency, seen = None, 0
    if (q := doc.get("latency")) is not None:
        low, median, high = (_positive(q[k], float) for k in ("p05", "p50", "p95"))
        if low is None or median is None or high is None or not low <= median <= high:
            return None
        latency, seen = Quantiles(low, median, high), int(q.get("n", 0))
    return ServiceMemory(service, saved, count, seconds, in_flight, latency, seen)


def _positive(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        return None
    if kind is int and value != int(value):
        return None
    return kind(value)


def learned(
    before: ServiceMemory | None, api_base: str, throttle: Throttle, polls: PollScheduler, create_seconds: float
) -> ServiceMemory:
    """What to keep after a run: what it learned, else what was known and not contradicted.

    A remembered limit that this run went past without a 429 no longer holds, and is dropped.
    """
    count, seconds = (before.create_count, before.create_seconds) if before else (None, None)
    if throttle.learned_count is not None:
        count, seconds = throttle.learned_count, create_seconds
    elif count is not None and throttle.window.count > count:
        count = seconds = None
    in_flight = before.in_flight if before else None
    if throttle.first_429_live is not None:
        in_flight = max(1, throttle.first_429_live)
    elif in_flight is not None and throttle.most_live > in_flight:
        in_flight = None
    latency, seen = (before.latency, before.tasks_seen) if before else (None, 0)
    if polls.model.finished_count >= MIN_FINISHED:
        latency, seen = polls.model.own(), polls.model.finished_count
    return ServiceMemory(service_of(api_base), time.time(), count, seconds, in_flight, latency, seen)


def save(folder: Path, api_base: str, memory: ServiceMemory) -> bool:
    """Keep it (atomically); whether that worked. A run that cannot write it goes on without."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(memory.as_json(), indent=1).encode()
        write_atomically(path_for(folder, api_base), data, folder)
        return True
    except OSError:
        return False


def forget(folder: Path, api_base: str) -> bool:
    """Drop the memory of this service; whether there was one."""
    try:
        path_for(folder, api_base).unlink()
        return True
    except OSError:
        return False


def describe(env: Mapping[str, str], out: Path) -> list[dict[str, Any]]:
    """Every service remembered where a run with DIR `out` would look (for `status`)."""
    found = []
    now = time.time()
    for folder in dict.fromkeys([directory(env, out, create=False), out / STATE_DIR]):
        for path in sorted(folder.glob(f"{PREFIX}*.json")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
                doc = json.loads(path.read_text(encoding="utf-8"))
                memory = parse(doc, str(doc.get("service")), now)
                if memory is not None and path == path_for(folder, memory.service):
                    found.append({"file": str(path), **memory.as_json()})
    return found


def describe_text(entries: list[dict[str, Any]]) -> str:
    """`status`'s lines for the remembered services ('' when none)."""
    lines = []
    for entry in entries:
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["saved_at"]))
        parts = []
        if entry["create_rate"]:
            parts.append(f"accepted {entry['create_rate'][0]} creates/{entry['create_rate'][1]:g} s")
        if entry["in_flight_at_429"]:
            parts.append(f"first 429 at {entry['in_flight_at_429']} tasks in flight")
        if q := entry["latency"]:
            parts.append(f"latency {q['p05']:.1f}/{q['p50']:.1f}/{q['p95']:.1f} s (p5/p50/p95 of {q['n']} tasks)")
        lines.append(f"  remembered {entry['service']} ({saved}): {'; '.join(parts) or 'no limits met'}")
    return "\n".join(lines)
