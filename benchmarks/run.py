"""batchgen's performance against the simulator, as a user runs it: the CLI in a subprocess.

    python benchmarks/run.py            # every scenario (about ten minutes: real_profile runs in real time)
    python benchmarks/run.py --quick    # tiny N: the smoke run CI does, so this cannot rot
    python benchmarks/run.py rate_known capacity

The simulator runs in a process of its own. For each scenario: wall time, the ideal makespan
(max(N/rate, ceil(N/capacity) * latency) + latency), efficiency = ideal / actual, client CPU ms per task (the
child's rusage), status queries per task, 429s, paid creates per item, peak RSS; the same for the naive client
(benchmarks/naive_client.py) where it applies, and the ratio. One table, then one JSON line per scenario.
Figures are printed, never asserted: targets and the last figures are in benchmarks/README.md.

`real_profile` is the service's published profile at the real time scale — 20 creates per 10 s, at most 100
tasks running, 20-45 s per image, about 10 status queries per second per key — run with batchgen's defaults
only, cold (a fresh state directory) and then warm (what the cold run remembered), without and with
`--callback-listen`. Its ideal is (ceil(N/20) - 1) x 10 s + the slowest latency (the window admits 20 at once);
it also prints the detection delay (a task's finish to the first status query that saw it finished, median and
p95, as the simulator measured it) and the status queries the service refused (429).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
# The batchgen beside this script, wherever the benchmark is started from: with `code_env`, `python -P` and this
# repository first on PYTHONPATH (`python -m` alone puts the current folder first; from another folder it would
# be whichever batchgen site-packages holds).
BATCHGEN = [sys.executable, "-P", "-m", "batchgen"]


@dataclass
class Scenario:
    name: str
    n: int
    sim: list[str]
    run: list[str]
    rate: float | None = None  # creates per second the service allows
    capacity: int | None = None
    latency: float = 0.0
    naive: bool = True
    naive_concurrency: str = "8"
    kind: str = "run"  # run | real | real_capacity | slow | big_images | plan | resume | resume_pending | warm_wrong
    callbacks: bool = False  # real: with --callback-listen
    upper: float | None = None  # the reference makespan, when not the ideal formula's (real_capacity: UB)
    notes: dict[str, Any] = field(default_factory=dict)

    def ideal(self) -> float:
        if self.upper is not None:
            return self.upper
        by_rate = self.n / self.rate if self.rate else 0.0
        by_capacity = math.ceil(self.n / self.capacity) * self.latency if self.capacity else 0.0
        return max(by_rate, by_capacity) + self.latency


def scenarios(quick: bool) -> list[Scenario]:
    scale = 0.1 if quick else 1.0
    n = lambda full: max(5, int(full * scale))  # noqa: E731
    big = 10_000 if quick else 100_000
    small = ["--image-scale", "0.1"]  # scheduling scenarios: small images, so the service's pace is what counts
    # The published profile: 20 creates per 10 s, 100 tasks running, 32.5 +/- 12.5 s per image, ~10 queries/s.
    # --quick keeps its limits but makes the images quick (a smoke run must not take minutes).
    real_latency = ["--latency", "2", "--jitter", "0.5"] if quick else ["--latency", "32.5", "--jitter", "12.5"]
    real = ["--rate", "20/10", "--capacity", "100", *real_latency, "--poll-limit", "10/1", *small]
    # The time-scaled scenarios run ten times faster than the real service: batchgen is told the service's
    # limits scaled the same way (creates per window, a status budget of 8/s x 10) and the scaled cold-start
    # interval, nothing else. Their simulator allows 100 status queries per second (10/s x 10).
    scaled = ["--poll-rate", "80", "--poll-interval", "0.25"]
    scaled_polls = ["--poll-limit", "100/1"]
    # rate_known and rate_unknown: the same service (20 creates/s, 2 s per image), told its rate or not.
    capacity_20 = ["--rate", "none", "--capacity", "20", "--latency", "1", "--jitter", "0", *scaled_polls, *small]
    rate_20 = ["--rate", "20/1", "--capacity", "500", "--latency", "2", "--jitter", "0.5", *scaled_polls, *small]
    return [
        Scenario("real_profile", n(120), real, [], naive=False, kind="real"),
        Scenario("real_profile_callbacks", n(120), real, [], naive=False, kind="real", callbacks=True),
        Scenario(
            "rate_known",
            n(300),
            rate_20,
            ["--create-rate", "20/1", *scaled],
            rate=20,
            capacity=500,
            latency=2,
            naive_concurrency="100",
        ),
        Scenario(
            "rate_unknown",
            n(300),
            rate_20,
            ["--create-rate", "100/1", *scaled],
            rate=20,
            capacity=500,
            latency=2,
            naive_concurrency="100",
        ),
        Scenario(
            "capacity",
            n(200),
            [*capacity_20, "--envelope-429", "mixed"],
            ["--create-rate", "1000/1", *scaled],
            capacity=20,
            latency=1,
            naive_concurrency="64",
        ),
        # Capacity: 20 slots, 1 s per image, no rate limit; the 429 in every envelope SPEC lists, in turn.
        Scenario(
            "capacity_c64",
            n(200),
            [*capacity_20, "--envelope-429", "mixed"],
            ["--create-rate", "1000/1", "--concurrency", "64", *scaled],
            capacity=20,
            latency=1,
            naive=False,
        ),
        # Rate and capacity at once: 20 creates/s and 30 slots at 2 +/- 0.5 s (capacity binds: 15 tasks/s).
        Scenario(
            "mixed",
            n(300),
            [
                "--rate",
                "20/1",
                "--capacity",
                "30",
                "--latency",
                "2",
                "--jitter",
                "0.5",
                "--envelope-429",
                "mixed",
                "--capacity-envelope-429",
                "empty",
                *scaled_polls,
                *small,
            ],
            ["--create-rate", "100/1", *scaled],
            rate=20,
            capacity=30,
            latency=2,
            naive=False,
        ),
        # Yesterday's memory says 4 +/- 3.5 s (40 +/- 35 s scaled x10); today the service takes 12 +/- 3 s.
        Scenario(
            "warm_wrong",
            n(100),
            [
                "--rate",
                "20/1",
                "--capacity",
                "500",
                *(["--latency", "1.2", "--jitter", "0.3"] if quick else ["--latency", "12", "--jitter", "3"]),
                *scaled_polls,
                *small,
            ],
            ["--create-rate", "20/1", *scaled],
            rate=20,
            latency=1.2 if quick else 12,
            naive=False,
            notes={"memory": (0.12, 0.4, 0.72) if quick else (1.2, 4.0, 7.2)},
            kind="warm_wrong",
        ),
        # The published profile at the real time scale, but 30 slots: UB = (N mean + (C - R) W) / C + (1 - 1/C)(L + J).
        Scenario(
            "real_capacity",
            n(150),
            [
                "--rate",
                "20/10",
                "--capacity",
                "30",
                *(real_latency if quick else ["--latency", "30", "--jitter", "10"]),
                "--poll-limit",
                "10/1",
                "--envelope-429",
                "mixed",
                *small,
            ],
            [],
            naive=False,
            kind="real_capacity",
            upper=None if quick else (150 * 30 + (30 - 20) * 10) / 30 + (1 - 1 / 30) * 40,
        ),
        # A slow night at the real time scale: 120 +/- 60 s per image, the published limits, the defaults.
        Scenario(
            "slow_night",
            n(60),
            [
                "--rate",
                "20/10",
                "--capacity",
                "100",
                *(real_latency if quick else ["--latency", "120", "--jitter", "60"]),
                "--poll-limit",
                "10/1",
                *small,
            ],
            [],
            naive=False,
            notes={"pause": 0 if quick else 10},
            kind="real",
        ),
        Scenario(
            "big_images",
            n(100) if not quick else 5,
            ["--rate", "none", "--latency", "0.5", "--jitter", "0", "--image-scale", "1"],
            ["--create-rate", "1000/1", "--concurrency", "32", "--poll-interval", "0.5", "--poll-rate", "50"],
            latency=0.5,
            naive=False,
            kind="big_images",
        ),
        Scenario("plan_100k", big, [], ["--dry-run"], naive=False, kind="plan"),
        Scenario("resume_100k", big, [], [], naive=False, kind="resume"),
        Scenario(
            "resume_100k_pending",
            big,
            ["--rate", "none", "--latency", "0.2", "--jitter", "0", *small],
            [],
            naive=False,
            kind="resume_pending",
        ),
    ]


# ---------------------------------------------------------------- processes


def code_env(folder: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (os.environ by default) with `folder` first on PYTHONPATH: `python -P -m batchgen` imports the
    batchgen under `folder`. Without -P, `python -m` puts the current folder ahead of PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return env


class Sim:
    """`batchgen sim` in its own process: this repository's, wherever the benchmark is run from."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*BATCHGEN, "sim", "--port", "0", "--api-key", KEY, "--random-seed", "1", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=code_env(ROOT),
        )
        try:  # a signal or a failed start here must not leave the simulator running
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            match = re.search(r"api=(\S+) files=(\S+)", line)
            if not match:
                raise RuntimeError(f"the simulator did not start: {line!r}")
        except BaseException:
            self.close(kill=True)
            raise
        self.api, self.files = match.group(1), match.group(2)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.api + "/__sim/stats", timeout=10) as response:
            return json.load(response)

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def measured(args: list[str], env: dict[str, str], limit: float = 900.0) -> dict[str, float]:
    """Run a command; its wall time, CPU seconds and peak RSS (its own rusage, not the simulator's).

    stderr goes to a file (a pipe read only at the end would fill and stall a chatty run), and a run still going
    after `limit` seconds is killed: a benchmark that hangs must fail, never hold CI until its time-out."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            proc.kill()

        watchdog = threading.Timer(limit, expire)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM to this process alone: the child must not outlive it
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise
        finally:
            watchdog.cancel()
        errors.seek(0)
        stderr = errors.read()
        if fired.is_set():
            stderr += f"\n(killed: still running after {limit:g} s)"
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "exit": proc.returncode,
        "stderr": stderr,
    }


def write_manifest(path: Path, n: int, *, as_csv: bool = False) -> Path:
    if as_csv:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "prompt", "aspect_ratio", "seed"])
            for i in range(n):
                writer.writerow([f"img-{i:06d}", f"A lighthouse at dawn, study number {i}", "16:9", i + 1])
        return path
    path.write_text(
        "".join(
            f"- id: img-{i:05d}\n  prompt: 'A harbour at dawn, number {i}'\n  aspect_ratio: '16:9'\n" for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def quiet_run(manifest: Path, out: Path | str, *extra: str) -> list[str]:
    """The command of `batchgen run` as every scenario runs it: MANIFEST into `out`, no bar, no lines but errors."""
    return [*BATCHGEN, "run", str(manifest), "--out", str(out), "--no-progress", "--quiet", *extra]


def batchgen_env(api: str, state: Path, code: Path = ROOT) -> dict[str, str]:
    """The environment of a run of the batchgen under `code` against `api`: the benchmark's key, and `state` as
    XDG_STATE_HOME (what the run remembers of the service). Never the user's own: a remembered service of an
    earlier benchmark whose port comes round again would make a cold run warm, and each run left a file there (582
    on this machine)."""
    env = {**os.environ, "BATCHGEN_API_BASE": api, "BATCHGEN_API_KEY": KEY, "XDG_STATE_HOME": str(state)}
    return code_env(code, env)


# ---------------------------------------------------------------- scenarios


def run_scenario(s: Scenario, work: Path) -> list[dict[str, Any]]:
    if s.kind == "plan":
        return [plan_100k(s, work)]
    if s.kind == "resume":
        return [resume_100k(s, work)]
    if s.kind == "resume_pending":
        return [resume_pending(s, work)]
    if s.kind == "real_capacity":
        return [real_capacity(s, work)]
    if s.kind == "warm_wrong":
        return warm_wrong(s, work)
    if s.kind == "real":
        return real_profile(s, work)
    return [scaled_scenario(s, work)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def real_profile(s: Scenario, work: Path) -> list[dict[str, Any]]:
    """The published profile with the defaults only: a cold run (fresh state directory), then a warm one."""
    manifest = write_manifest(work / f"{s.name}.yaml", s.n)
    state = work / f"{s.name}-state"  # XDG_STATE_HOME: what the cold run learns, the warm run starts from
    rows = []
    sim = Sim(s.sim)  # one simulator for both runs: the memory is kept per service address
    try:
        for start in ("cold", "warm"):
            if start == "warm":
                time.sleep(s.notes.get("pause", 10))  # the next night: the create window no longer holds the cold run's
            extra = ["--callback-listen", f"127.0.0.1:{free_port()}"] if s.callbacks else []
            row = real_run(s, sim, manifest, work / f"{s.name}-{start}", state, extra, label=f"{s.name} ({start})")
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        sim.close()
    return rows


def real_run(
    s: Scenario, sim: Sim, manifest: Path, out: Path, state: Path, extra: list[str], *, label: str
) -> dict[str, Any]:
    """One run with the defaults (and `extra`) against `sim`, measured as the simulator saw it."""
    before = sim.stats()
    result = measured(quiet_run(manifest, out, *extra), batchgen_env(sim.api, state))
    after = sim.stats()
    tasks = [t for t in after["latency"] if t not in before["latency"]]
    delays = sorted(after["detection_delay"][t] for t in tasks if t in after["detection_delay"])
    ideal = s.upper or (math.ceil(s.n / 20) - 1) * 10 + max((after["latency"][t] for t in tasks), default=0.0)
    polls = after["polls"] - before["polls"]
    row: dict[str, Any] = {
        "scenario": label,
        "n": s.n,
        "exit": result["exit"],
        "wall_s": round(result["wall"], 2),
        "ideal_s": round(ideal, 2),
        "efficiency": round(ideal / result["wall"], 3),
        "cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 2),
        "polls_per_task": round(polls / s.n, 2),
        "poll_429": after["polls_rate_limited"] - before["polls_rate_limited"],
        "delay_p50_s": round(statistics.median(delays), 2) if delays else None,
        "delay_p95_s": round(delays[min(len(delays) - 1, math.ceil(0.95 * len(delays)) - 1)], 2) if delays else None,
        "r429": after["rate_limited"] - before["rate_limited"],
        "creates_per_item": round((after["creates"] - before["creates"]) / s.n, 3),
        "peak_rss_mb": round(result["rss_mb"], 1),
    }
    if not before["creates"]:  # the simulator's figure is the most since it started: a first run's only
        row["most_in_flight"] = after["max_in_flight"]
    if result["exit"] != 0:
        row["stderr"] = result["stderr"][-500:]
    return row


def real_capacity(s: Scenario, work: Path) -> dict[str, Any]:
    """One cold run with the defaults at the real time scale (the reference: UB, or the window's ideal)."""
    manifest = write_manifest(work / f"{s.name}.yaml", s.n)
    sim = Sim(s.sim)
    try:
        return real_run(s, sim, manifest, work / s.name, work / f"{s.name}-state", [], label=s.name)
    finally:
        sim.close()


def plant_memory(state: Path, api: str, quantiles: tuple[float, float, float]) -> None:
    """A remembered service whose latencies are `quantiles` (p5, p50, p95), as batchgen would have kept it."""
    sys.path.insert(0, str(ROOT))
    from batchgen import memory

    folder = state / "batchgen"
    folder.mkdir(parents=True, exist_ok=True)
    low, median, high = quantiles
    now = time.time()
    latency = {"p05": low, "p50": median, "p95": high, "n": 100}
    if memory.VERSION == 1:  # the format before the remembered service kept how it learned each value
        doc: dict[str, Any] = {
            "version": 1,
            "service": memory.service_of(api),
            "saved_at": now,
            "create_rate": None,
            "in_flight_at_429": None,
            "latency": latency,
        }
    else:
        learned = {"learned_from": "complete_time", "learned_at": now}
        doc = {
            "version": memory.VERSION,
            "service": memory.service_of(api),
            "saved_at": now,
            "create_rate": None,
            "models": {"imagen4-ultra": {"capacity": None, "latency": {**latency, **learned}}},
        }
    memory.path_for(folder, api).write_text(json.dumps(doc))


def warm_wrong(s: Scenario, work: Path) -> list[dict[str, Any]]:
    """Yesterday's memory says 4 +/- 3.5 s; today's service takes 12 +/- 3 s: the warm run against a cold one."""
    manifest = write_manifest(work / f"{s.name}.yaml", s.n)
    rows = []
    for start in ("cold", "warm"):
        state = work / f"{s.name}-{start}-state"
        sim = Sim(s.sim)
        try:
            if start == "warm":
                plant_memory(state, sim.api, s.notes["memory"])
            before = sim.stats()
            result = measured(
                quiet_run(manifest, work / f"{s.name}-{start}", *s.run),
                batchgen_env(sim.api, state),
            )
            after = sim.stats()
        finally:
            sim.close()
        delays = sorted(after["detection_delay"].values())
        rows.append(
            {
                "scenario": f"{s.name} ({start})",
                "n": s.n,
                "exit": result["exit"],
                "wall_s": round(result["wall"], 2),
                "ideal_s": round(s.ideal(), 2),
                "efficiency": round(s.ideal() / result["wall"], 3),
                "cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 2),
                "polls_per_task": round((after["polls"] - before["polls"]) / s.n, 2),
                "poll_429": after["polls_rate_limited"],
                "delay_p95_s": round(delays[min(len(delays) - 1, math.ceil(0.95 * len(delays)) - 1)], 2)
                if delays
                else None,
                "r429": after["rate_limited"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def scaled_scenario(s: Scenario, work: Path) -> dict[str, Any]:
    manifest = write_manifest(work / f"{s.name}.yaml", s.n)
    row: dict[str, Any] = {"scenario": s.name, "n": s.n}
    sim = Sim(s.sim)
    try:
        before = sim.stats()
        result = measured(quiet_run(manifest, work / s.name, *s.run), batchgen_env(sim.api, work / f"{s.name}-state"))
        after = sim.stats()
    finally:
        sim.close()
    creates = after["creates"] - before["creates"]
    row.update(
        exit=result["exit"],
        wall_s=round(result["wall"], 2),
        cpu_ms_per_task=round(1000 * result["cpu"] / s.n, 2),
        polls_per_task=round((after["polls"] - before["polls"]) / s.n, 2),
        r429=after["rate_limited"],
        creates_per_item=round(creates / s.n, 3),
        peak_rss_mb=round(result["rss_mb"], 1),
    )
    if s.kind == "big_images":
        row.update(big_images(s, manifest, work, result))
    else:
        row["ideal_s"] = round(s.ideal(), 2)
        row["efficiency"] = round(s.ideal() / result["wall"], 3)
    if s.naive:
        row.update(naive(s, manifest, work))
    if result["exit"] != 0:
        row["stderr"] = result["stderr"][-500:]
    return row


def naive(s: Scenario, manifest: Path, work: Path) -> dict[str, Any]:
    sim = Sim(s.sim)
    try:
        concurrency = s.naive_concurrency
        result = measured(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "naive_client.py"),
                str(manifest),
                str(work / f"{s.name}-naive"),
                concurrency,
            ],
            batchgen_env(sim.api, work / f"{s.name}-naive-state"),
        )
        stats = sim.stats()
    finally:
        sim.close()
    return {
        "naive_wall_s": round(result["wall"], 2),
        "naive_efficiency": round(s.ideal() / result["wall"], 3),
        "naive_polls_per_task": round(stats["polls"] / s.n, 2),
        "naive_429": stats["rate_limited"],
        "naive_cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 2),
    }


def big_images(s: Scenario, manifest: Path, work: Path, result: dict[str, float]) -> dict[str, Any]:
    """Download throughput of batchgen against curl fetching the same files.

    batchgen's time for the bytes is its wall time less that of the same run with tiny images (same service
    makespan, same start-up, same requests); curl fetches the same URLs, 32 at a time. Peak RSS of both runs
    shows whether memory grows with image size (it must not: downloads stream).
    """
    out = work / s.name
    files = sorted(p for p in out.iterdir() if p.suffix in (".png", ".jpg"))
    total = sum(p.stat().st_size for p in files)
    tiny = Sim([*s.sim, "--image-scale", "0.02"])
    try:
        small = measured(quiet_run(manifest, work / "tiny", *s.run), batchgen_env(tiny.api, work / "tiny-state"))
    finally:
        tiny.close()
    sim = Sim(s.sim)
    try:
        urls = fresh_urls(sim, s.n)
        curl = shutil.which("curl")
        started = time.monotonic()
        if curl:
            targets = [arg for url in urls for arg in ("-o", "/dev/null", url)]
            subprocess.run(
                [curl, "-s", "--parallel", "--parallel-max", "32", *targets], check=True, stderr=subprocess.DEVNULL
            )
        curl_s = time.monotonic() - started
    finally:
        sim.close()
    batchgen_download_s = max(0.001, result["wall"] - small["wall"])
    return {
        "image_mb": round(total / s.n / 1e6, 2),
        "batchgen_mb_s": round(total / 1e6 / batchgen_download_s, 1),
        "curl_mb_s": round(total / 1e6 / curl_s, 1) if curl else None,
        "vs_curl": round(curl_s / batchgen_download_s, 2) if curl else None,
        "rss_tiny_mb": round(small["rss_mb"], 1),
    }


def fresh_urls(sim: Sim, n: int) -> list[str]:
    """Create n tasks on a fresh simulator and return their result URLs once they are done."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    ids = []
    for i in range(n):
        body = json.dumps(
            {
                "model": "imagen4-ultra",
                "input": {"prompt": f"A harbour at dawn, number {i}", "aspect_ratio": "widescreen_16_9"},
            }
        ).encode()
        request = urllib.request.Request(sim.api + "/api/v1/jobs/createTask", data=body, headers=headers)
        with urllib.request.urlopen(request) as response:
            ids.append(json.load(response)["data"]["taskId"])
    urls = []
    for task_id in ids:
        while True:
            request = urllib.request.Request(f"{sim.api}/api/v1/jobs/recordInfo?taskId={task_id}", headers=headers)
            with urllib.request.urlopen(request) as response:
                data = json.load(response)["data"]
            if data and data["state"] == "success":
                urls.append(json.loads(data["resultJson"])["resultUrls"][0])
                break
            time.sleep(0.1)
    return urls


def plan_100k(s: Scenario, work: Path) -> dict[str, Any]:
    manifest = write_manifest(work / "plan.csv", s.n, as_csv=True)
    result = measured(
        [*BATCHGEN, "run", str(manifest), "--out", str(work / "plan"), "--dry-run"],
        code_env(ROOT),
    )
    return {
        "scenario": s.name,
        "n": s.n,
        "exit": result["exit"],
        "wall_s": round(result["wall"], 2),
        "cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 3),
        "peak_rss_mb": round(result["rss_mb"], 1),
    }


def write_ledger(path: Path, out: Path, done: int) -> None:
    """A ledger of the first `done` items of the manifest at `path`, succeeded (as batchgen writes it), with their
    images; the rest are still to do."""
    sys.path.insert(0, str(ROOT))
    from batchgen import manifest as manifests

    out.mkdir()
    items = {}
    for n, item in enumerate(manifests.load(path)):
        if n >= done:
            break
        items[item.id] = {
            "state": "succeeded",
            "task_id": f"task_imagen4-ultra_{item.id}",
            "attempts": 1,
            "request": item.request,
            "files": [f"{item.id}.png"],
            "sha256": ["0" * 64],
            "error": None,
            "submitted_at": "2026-11-26T02:00:00Z",
            "finished_at": "2026-11-26T02:01:00Z",
        }
        (out / f"{item.id}.png").touch()  # the images the ledger vouches for are there
    document = {
        "version": 1,
        "manifest": path.name,
        "updated_at": "2026-11-26T03:00:00Z",
        "counts": {"pending": 0, "submitted": 0, "succeeded": len(items), "failed": 0},
        "items": items,
        "not_in_manifest": [],
    }
    (out / "results.json").write_text(json.dumps(document, indent=1))
    # Then written again by batchgen's own snapshot writer, as a night leaves it: its layout, and its stamp in the
    # journal's header (a file batchgen did not write is read key by key, ~0.15 s more for 100,000 items).
    from batchgen.ledger import Ledger

    ledger = Ledger.open(out, path.name)
    ledger._dirty = True  # nothing changed: the snapshot is written all the same
    ledger.close()


def ledger_in_child(path: Path, out: Path, done: int) -> None:
    """write_ledger in a process of its own: Linux carries a process's peak RSS across fork and exec into its
    child's ru_maxrss, so a benchmark that built 100,000 records itself would measure its own peak, not the run's
    (the ~520 MB once reported for a resume was this one's)."""
    subprocess.run([sys.executable, __file__, "--write-ledger", str(path), str(out), str(done)], check=True)


def resume_100k(s: Scenario, work: Path) -> dict[str, Any]:
    """A ledger of n finished items, then a rerun that has nothing to do."""
    path = write_manifest(work / "resume.csv", s.n, as_csv=True)
    out = work / "resume"
    ledger_in_child(path, out, s.n)
    result = measured(
        quiet_run(path, out),
        batchgen_env("http://127.0.0.1:9", work / "resume-state"),
    )
    return {
        "scenario": s.name,
        "n": s.n,
        "exit": result["exit"],
        "wall_s": round(result["wall"], 2),
        "cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 3),
        "peak_rss_mb": round(result["rss_mb"], 1),
    }


def resume_pending(s: Scenario, work: Path) -> dict[str, Any]:
    """A ledger of n items of which 1,000 are still to do: peak memory, and how soon the first createTask goes."""
    pending = min(1000, s.n // 10)
    path = write_manifest(work / "pending.csv", s.n, as_csv=True)
    out = work / "pending"
    ledger_in_child(path, out, s.n - pending)
    sim = Sim(s.sim)
    first: list[float] = []
    started = time.monotonic()
    stop = threading.Event()

    def watch() -> None:  # the simulator's count of createTask calls, read until the first one
        while not stop.is_set() and not first:
            if sim.stats()["create_calls"]:
                first.append(time.monotonic() - started)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = time.monotonic()
        result = measured(
            quiet_run(path, out, "--limit", "20", "--create-rate", "1000/1", "--poll-interval", "0.1"),
            batchgen_env(sim.api, work / "pending-state"),
        )
    finally:
        stop.set()
        watcher.join()
        sim.close()
    return {
        "scenario": s.name,
        "n": s.n,
        "exit": 0 if result["exit"] == 5 else result["exit"],  # 5: incomplete, as --limit 20 leaves it
        "wall_s": round(result["wall"], 2),
        "first_create_s": round(first[0], 2) if first else None,
        "cpu_ms_per_task": round(1000 * result["cpu"] / s.n, 3),
        "peak_rss_mb": round(result["rss_mb"], 1),
    }


# ---------------------------------------------------------------- output


COLUMNS = [
    "scenario",
    "n",
    "exit",
    "wall_s",
    "ideal_s",
    "efficiency",
    "cpu_ms_per_task",
    "polls_per_task",
    "poll_429",
    "delay_p50_s",
    "delay_p95_s",
    "r429",
    "most_in_flight",
    "creates_per_item",
    "peak_rss_mb",
    "first_create_s",
    "naive_wall_s",
    "naive_efficiency",
    "naive_polls_per_task",
    "naive_429",
    "vs_naive",
    "batchgen_mb_s",
    "curl_mb_s",
    "vs_curl",
    "rss_tiny_mb",
]


def table(rows: list[dict[str, Any]]) -> str:
    shown = [c for c in COLUMNS if any(c in r for r in rows)]
    cells = [[str(r.get(c, "")) for c in shown] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(shown), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells)])


def main() -> int:
    if sys.argv[1:2] == ["--write-ledger"]:  # internal: resume_100k's set-up, in a process of its own
        write_ledger(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return 0
    # SIGTERM (a CI time-out, kill): unwind, so that the simulator, the client and the temporary folder go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run")
    args = parser.parse_args()
    chosen = [s for s in scenarios(args.quick) if not args.names or s.name in args.names]
    rows = []
    with tempfile.TemporaryDirectory(prefix="batchgen-bench-") as tmp:
        compiled()
        for scenario in chosen:
            for row in run_scenario(scenario, Path(tmp)):
                if "naive_wall_s" in row:
                    row["vs_naive"] = round(row["naive_wall_s"] / row["wall_s"], 2)
                rows.append(row)
                if scenario.kind != "real":  # real_profile prints each run as it ends (they take minutes)
                    print(json.dumps(row), flush=True)
        if not args.names or "matrix_limit" in args.names:
            rows.append(matrix_limit(Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {'quick' if args.quick else 'full'}")
    print(table(rows))
    return 0 if all(r.get("exit") == 0 for r in rows) else 1


def compiled(folder: Path = ROOT) -> None:
    """The bytecode of the batchgen under `folder` compiled, as an installed package has it (in its __pycache__,
    which git ignores). An
    environment with PYTHONDONTWRITEBYTECODE set otherwise compiles every batchgen module from source at every
    start (~80 ms of CPU a run). Not PYTHONPYCACHEPREFIX: under it the standard library's and aiohttp's own
    bytecode is not found either, and a run costs ~0.5 s more."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder / "batchgen")], check=True)


def matrix_limit(work: Path) -> dict[str, Any]:
    """`batchgen validate` of one item whose matrix makes 1,000 x 1,000 x 1,000 cells: refused from the axes'
    lengths, never made one by one (that would take hours). Its exit is 0 when it was refused as it should be
    (validate's exit 2); the figure is the wall time of the refusal."""
    (work / "n.txt").write_text("\n".join(str(n) for n in range(1000)), encoding="utf-8")
    path = work / "big.yaml"
    path.write_text(
        "- id: big\n  prompt: '{a} {b} {c}'\n  matrix: {a: {file: n.txt}, b: {file: n.txt}, c: {file: n.txt}}\n",
        encoding="utf-8",
    )
    result = measured([*BATCHGEN, "validate", str(path)], code_env(ROOT))
    return {
        "scenario": "matrix_limit",
        "n": 1_000_000_000,
        "exit": 0 if result["exit"] == 2 else result["exit"] or 1,
        "wall_s": round(result["wall"], 2),
        "peak_rss_mb": round(result["rss_mb"], 1),
    }


if __name__ == "__main__":
    sys.exit(main())
