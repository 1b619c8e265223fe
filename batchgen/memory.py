"""What a run learned about the service, kept for the next run against it: a warm start, never a rule.

Per service (its API base without credentials or query; never the key) one file holds the create rate it
accepted when it said 429 for the rate (per API base: the account's window) and, per model, the tasks it ran for
us when it said 429 for being full (capacity) and its tasks' latency quantiles. Each value keeps how and when it
was learned (`learned_from`, `learned_at`) and ages out after `MAX_AGE`. The next run starts from them, clamped
(rates never above the flags, a capacity never above --concurrency and re-probed, latencies within
[MIN_LATENCY, --task-timeout]), so a nightly job starts warm, also when each night writes to a new folder.

Where: `$XDG_STATE_HOME/batchgen`, else `~/.local/state/batchgen`, else (no writable home, a bare cron)
`DIR/.batchgen`. A hint only: a file not regular, too large, damaged, of another version or service is ignored
(no link followed, no blocking, at most MAX_BYTES); a run that cannot write it goes on. `--simulate` keeps none;
`run --forget-service` forgets it; `status` shows the services DIR's runs used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import BatchgenError
from .escapes import inert_line
from .files import STATE_DIR, read_bounded, state_dir, write_atomically
from .limits import Hints, Throttle
from .polls import MIN_FINISHED, PollScheduler, Quantiles

if TYPE_CHECKING:
    from .config import RunSettings
    from .progress import Reporter

VERSION = 2
MAX_AGE = 30 * 86400.0  # a month-old picture of a service is no picture of it
MAX_BYTES = 256 * 1024  # a memory is a few hundred bytes per model; anything larger was not written by us
MAX_MODELS = 64  # models kept per service
MIN_LATENCY = 0.5  # seconds: no image model answers faster; a smaller quantile is a misreading
PREFIX = "service-"
RATE_429 = "rate_429"  # the create window's count after the service said 429 with the window at its level
CAPACITY_429 = "capacity_429"  # the tasks running for us when the service said 429 for being full
# Latency sources: the service's own createTime/completeTime, or the age at which a task of this run was first
# seen finished (at most that). A task resumed from an earlier run never counts: its age is not its latency.
LATENCY_SOURCES = ("complete_time", "first_seen")


@dataclass(frozen=True, slots=True)
class Rate:
    count: int  # creates per `seconds` the service accepted
    seconds: float
    learned_from: str
    learned_at: float  # Unix seconds


@dataclass(frozen=True, slots=True)
class Capacity:
    tasks: int  # tasks running for us at its 429
    learned_from: str
    learned_at: float


@dataclass(frozen=True, slots=True)
class Latency:
    quantiles: Quantiles
    tasks: int  # finished tasks behind the quantiles
    learned_from: str
    learned_at: float


@dataclass(frozen=True, slots=True)
class ServiceMemory:
    """One service as remembered, seen through one model (the run's)."""

    service: str  # the API base, without credentials, query or fragment
    model: str
    saved_at: float  # Unix seconds
    rate: Rate | None = None
    capacity: Capacity | None = None
    latency: Latency | None = None
    others: dict[str, Any] = field(default_factory=dict)  # the other models' entries, kept as found

    def hints(self, create_rate: tuple[int, float], concurrency: int) -> Hints:
        """The limits' starting points, clamped to the flags; a rate learned for another window does not apply."""
        count = None
        if self.rate is not None and self.rate.seconds == create_rate[1]:
            count = min(self.rate.count, create_rate[0])
        tasks = min(self.capacity.tasks, concurrency) if self.capacity is not None else None
        return Hints(create_count=count, in_flight=tasks)

    def prior(self, task_timeout: float) -> Quantiles | None:
        """The latency quantiles to start from, clamped to [MIN_LATENCY, --task-timeout]."""
        if self.latency is None:
            return None
        high = max(MIN_LATENCY, task_timeout)
        low, median, top = (min(high, max(MIN_LATENCY, v)) for v in _triple(self.latency.quantiles))
        return Quantiles(low, median, top)

    def as_json(self) -> dict[str, Any]:
        models = dict(self.others)
        entry = {
            "capacity": _fact_json(self.capacity, tasks=self.capacity.tasks) if self.capacity else None,
            "latency": (
                _fact_json(
                    self.latency,
                    p05=self.latency.quantiles.low,
                    p50=self.latency.quantiles.median,
                    p95=self.latency.quantiles.high,
                    n=self.latency.tasks,
                )
                if self.latency
                else None
            ),
        }
        if entry["capacity"] or entry["latency"]:
            models[self.model] = entry
        else:
            models.pop(self.model, None)
        return {
            "version": VERSION,
            "service": self.service,
            "saved_at": round(self.saved_at, 3),
            "create_rate": (
                _fact_json(self.rate, count=self.rate.count, seconds=self.rate.seconds) if self.rate else None
            ),
            "models": models,
        }


def _fact_json(fact: Rate | Capacity | Latency, **values: Any) -> dict[str, Any]:
    return {**values, "learned_from": fact.learned_from, "learned_at": round(fact.learned_at, 3)}


def _triple(q: Quantiles) -> tuple[float, float, float]:
    return q.low, q.median, q.high


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


def read_document(path: Path) -> Any:
    """The JSON document at `path`: a regular file (no link, FIFO or device), at most MAX_BYTES, read without
    blocking; None when there is none worth reading."""
    data = read_bounded(path, MAX_BYTES, "the remembered service", follow=False)
    if isinstance(data, str):
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def load(folder: Path, api_base: str, model: str, *, now: float | None = None) -> ServiceMemory | None:
    """The memory of this service for `model`, or None: none kept, damaged, newer, or another service's."""
    doc = read_document(path_for(folder, api_base))
    return parse(doc, service_of(api_base), model, time.time() if now is None else now)


def parse(doc: Any, service: str, model: str, now: float) -> ServiceMemory | None:
    """A memory document checked field by field; None unless it is whole and this service's. A value too old,
    absurd or of unknown origin is left out, not trusted."""
    try:
        if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("service") != service:
            return None
        saved = _number(doc.get("saved_at"))
        models = doc.get("models")
        if saved is None or not isinstance(models, dict):
            return None
        entry = models.get(model)
        entry = entry if isinstance(entry, dict) else {}
        others = {
            name: value
            for name, value in list(models.items())[:MAX_MODELS]
            if name != model and isinstance(name, str) and isinstance(value, dict)
        }
        return ServiceMemory(
            service,
            model,
            saved,
            rate=_rate(doc.get("create_rate"), now),
            capacity=_capacity(entry.get("capacity"), now),
            latency=_latency(entry.get("latency"), now),
            others=others,
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _fresh(fact: Any, sources: Iterable[str], now: float) -> float | None:
    """The fact's `learned_at` when it is a dict learned in a known way, within MAX_AGE; else None."""
    if not isinstance(fact, dict) or fact.get("learned_from") not in tuple(sources):
        return None
    at = _number(fact.get("learned_at"))
    return at if at is not None and now - MAX_AGE <= at <= now + 86400 else None


def _rate(fact: Any, now: float) -> Rate | None:
    at = _fresh(fact, (RATE_429,), now)
    count, seconds = (_number(fact.get(k)) for k in ("count", "seconds")) if at is not None else (None, None)
    if at is None or count is None or seconds is None or count != int(count) or count < 1:
        return None
    return Rate(int(count), seconds, RATE_429, at)


def _capacity(fact: Any, now: float) -> Capacity | None:
    at = _fresh(fact, (CAPACITY_429,), now)
    tasks = _number(fact.get("tasks")) if at is not None else None
    if at is None or tasks is None or tasks != int(tasks) or tasks < 1:
        return None
    return Capacity(int(tasks), CAPACITY_429, at)


def _latency(fact: Any, now: float) -> Latency | None:
    at = _fresh(fact, LATENCY_SOURCES, now)
    if at is None:
        return None
    low, median, high = (_number(fact.get(k)) for k in ("p05", "p50", "p95"))
    if low is None or median is None or high is None or not low <= median <= high:
        return None
    tasks = _number(fact.get("n")) or 0.0
    return Latency(Quantiles(low, median, high), int(tasks), str(fact["learned_from"]), at)


def _number(value: Any) -> float | None:
    """A finite positive number below 1e12 (never a bool), else None."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and 0 < value < 1e12
    return float(value) if ok else None


def learned(
    before: ServiceMemory | None,
    api_base: str,
    model: str,
    throttle: Throttle,
    polls: PollScheduler,
    create_rate: tuple[int, float],
) -> ServiceMemory:
    """What to keep after a run: what it learned, else what was known and not contradicted (with its old date,
    so that it ages out). A remembered limit that this run went past without a 429 no longer holds."""
    now = time.time()
    rate = before.rate if before else None
    if throttle.learned_count is not None:
        rate = Rate(min(throttle.learned_count, create_rate[0]), create_rate[1], RATE_429, now)
    elif rate is not None and rate.seconds == create_rate[1] and throttle.window.count > rate.count:
        rate = None
    capacity = before.capacity if before else None
    if throttle.cap_level is not None:
        capacity = Capacity(max(1, throttle.cap_level), CAPACITY_429, now)
    elif capacity is not None and throttle.limiter.most_running > capacity.tasks:
        capacity = None
    latency = before.latency if before else None
    model_ = polls.model
    if model_.finished_count >= MIN_FINISHED and (own := model_.own()) is not None:
        source = "complete_time" if model_.exact_count * 2 >= model_.finished_count else "first_seen"
        low, median, high = (max(MIN_LATENCY, v) for v in _triple(own))
        latency = Latency(Quantiles(low, median, high), model_.finished_count, source, now)
    others = before.others if before else {}
    return ServiceMemory(service_of(api_base), model, now, rate, capacity, latency, others)


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


USED = "services.json"  # in DIR/.batchgen: the services (names as kept, never a credential) DIR's runs used


def used(out: Path) -> list[str]:
    """The services this DIR's runs used (`status`, --forget-service): names as a run keeps them, no planted ones."""
    doc = read_document(out / STATE_DIR / USED)
    return [s for s in doc[:MAX_MODELS] if kept_name(s)] if isinstance(doc, list) else []


def kept_name(text: object) -> bool:  # urlsplit raises ValueError on some
    try:
        return isinstance(text, str) and service_of(text) == text
    except ValueError:
        return False


def note_used(out: Path, api_base: str | None) -> None:
    """Add this service (None, --simulate: no service, but the list is there) to the ones DIR's runs used;
    quietly nothing when that cannot be written."""
    services, name = used(out), service_of(api_base) if api_base else None
    if os.path.lexists(out / STATE_DIR / USED) and (name is None or name in services):
        return
    with contextlib.suppress(OSError, BatchgenError):
        folder = state_dir(out)
        noted = [*services, *([name] if name else [])][-MAX_MODELS:]
        write_atomically(folder / USED, json.dumps(noted).encode(), folder)


def forget_all(env: Mapping[str, str], out: Path, api_base: str) -> list[str]:
    """--forget-service: drop the memory of `api_base` (or, when none is given, of every service DIR's runs
    used) wherever a run with DIR `out` would look; the services forgotten."""
    services = [api_base] if api_base else used(out)
    folders = dict.fromkeys([directory(env, out, create=False), out / STATE_DIR])
    return [service_of(s) for s in services if [forget(f, s) for f in folders].count(True)]


def describe(env: Mapping[str, str], out: Path, services: Iterable[str]) -> list[dict[str, Any]]:
    """The remembered services among `services` (the API bases this DIR's ledger used), where a run with DIR
    `out` would look (for `status`)."""
    found = []
    now = time.time()
    wanted = dict.fromkeys(service_of(s) for s in services if s)
    for folder in dict.fromkeys([directory(env, out, create=False), out / STATE_DIR]):
        for service in wanted:
            path = path_for(folder, service)
            doc = read_document(path)
            if parse(doc, service, "", now) is not None:
                found.append({"file": str(path), **_aged(doc, now)})
    return found


def _aged(doc: dict[str, Any], now: float) -> dict[str, Any]:
    """The document with the values too old or of unknown origin left out, as a run would read it."""
    shown = dict(doc)
    shown["create_rate"] = doc["create_rate"] if _rate(doc.get("create_rate"), now) else None
    models = {}
    for name, entry in doc["models"].items():
        if isinstance(name, str) and isinstance(entry, dict):
            capacity, latency = entry.get("capacity"), entry.get("latency")
            kept = {"capacity": capacity if _capacity(capacity, now) else None}
            kept["latency"] = latency if _latency(latency, now) else None
            if kept["capacity"] or kept["latency"]:
                models[name] = kept
    shown["models"] = models
    return shown


def describe_text(entries: list[dict[str, Any]]) -> str:
    """`status`'s lines for the remembered services ('' when none)."""
    lines = []
    for entry in entries:
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["saved_at"]))
        parts = []
        if rate := entry["create_rate"]:
            parts.append(f"accepted {rate['count']} creates/{rate['seconds']:g} s ({rate['learned_from']})")
        for name, model in entry["models"].items():
            if cap := model["capacity"]:
                parts.append(f"{inert_line(name, 200)}: full at {cap['tasks']} tasks running ({cap['learned_from']})")
            if q := model["latency"]:
                parts.append(
                    f"{inert_line(name, 200)}: latency {q['p05']:.1f}/{q['p50']:.1f}/{q['p95']:.1f} s "
                    f"(p5/p50/p95 of {int(q.get('n', 0))} tasks, {q['learned_from']})"
                )
        service = inert_line(entry["service"], 200)
        lines.append(f"  remembered {service} ({saved}): {'; '.join(parts) or 'no limits met'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- a run's side


def recall(settings: RunSettings, model: str, reporter: Reporter) -> tuple[Path | None, ServiceMemory | None]:
    """Where this run keeps what it learns (None: --simulate keeps nothing), and what earlier runs learned about
    its service and `model` (none after --forget-service). `-v` names what was loaded."""
    if settings.simulate:
        return None, None
    folder = directory(os.environ, settings.out)
    if settings.forget_service:
        forget_service(settings, reporter)
        return folder, None
    kept = load(folder, settings.api_base, model)
    if kept is not None:
        reporter.debug(f"remembered service loaded: {describe_text([kept.as_json()]).strip()}")
    return folder, kept


def keep(
    folder: Path,
    *,
    settings: RunSettings,
    model: str,
    before: ServiceMemory | None,
    throttle: Throttle,
    polls: PollScheduler,
    reporter: Reporter,
) -> None:
    """Keep what the run learned; `-v` says where today's tasks contradicted what was remembered."""
    if polls.model.contradicted:
        reporter.debug("today's tasks contradicted the remembered latencies: this run's own were used")
    after = learned(before, settings.api_base, model, throttle, polls, settings.create_rate)
    if before is not None and before.capacity is not None and after.capacity is None:
        reporter.debug(f"today's tasks ran past the remembered capacity ({before.capacity.tasks}): forgotten")
    if before is not None and before.rate is not None and after.rate is None:
        reporter.debug(f"today's creates went past the remembered rate ({before.rate.count}): forgotten")
    note_used(settings.out, settings.api_base)
    if not save(folder, settings.api_base, after):
        reporter.debug(f"could not keep what this run learned about the service in {folder}")


def forget_service(settings: RunSettings, reporter: Reporter) -> None:
    """--forget-service: drop what earlier runs learned (also when DIR has nothing left to do)."""
    if settings.simulate:
        return
    for service in forget_all(os.environ, settings.out, settings.api_base):
        reporter.info(f"--forget-service: forgot what earlier runs learned about {inert_line(service, 200)}")
