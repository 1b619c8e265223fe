"""Many nights in a row against the simulator, with faults at random; after each night, the guarantees are checked.

    python benchmarks/soak.py                   # 200 nights, a random seed (printed)
    python benchmarks/soak.py --nights 500 --seed 7
    python benchmarks/soak.py --quick           # a fixed seed and a few nights: what CI runs (under a minute)

Each night: the simulator (in this process, one service for the whole soak) gets a random set of fault knobs;
the manifest may gain, lose or change items; results.json may be deleted or truncated, an image deleted, the
disk nearly filled (a small tmpfs, when `mount` is permitted), the simulator restarted mid-night; then
`batchgen run` runs as the nightly job does (a subprocess, no terminal), perhaps with --limit, --max-runtime or
--retry-failed, and perhaps gets SIGTERM or SIGKILL at a random moment. After it, the invariants:

  money     for every item, the simulator's creates equal the ledger's `paid`, and every create beyond them is
            marked in doubt (paid <= creates <= paid + in_doubt)
  ledger    results.json (plus its journal) loads, and agrees with the files on disk (sha256)
  files     no image file the ledger does not vouch for, except one a kill left under its item's own name;
            no name credited to two items (case-folded)
  key       the API key (or its URL-encoded forms) in no file under DIR and in no log line
  crash     no traceback on stderr; the exit code is one SPEC lists
  exit      a night that ended by itself exits with the code the ledger implies (0, 1 or 5)
  hang      a night ends within NIGHT_LIMIT; one still running then is killed, after its last stderr lines (the
            run's -v log) and its stacks (`py-spy dump`, if installed: pip install py-spy) are printed

It prints what it tried and what held, and exits 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, quote_plus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchgen import ledger, manifest  # noqa: E402
from batchgen.errors import LedgerError  # noqa: E402
from batchgen.runner import exit_code  # noqa: E402
from batchgen.sim import SimConfig, Simulator  # noqa: E402
from batchgen.sim.model import request_key  # noqa: E402

KEY = "soak-key/with+odd=chars_0123456789"  # odd characters a header allows (a space it does not)
SPEC_EXITS = {0, 1, 2, 3, 4, 5, 130, 143}
NIGHT_LIMIT = 120.0  # seconds: a night still running after this is a hang (a broken invariant)
HANG_TAIL = 60  # stderr lines (the run's -v log) printed for a night still running at the limit
DISK = "24m"  # the tmpfs for DIR, when it can be mounted


class Soak:
    def __init__(self, seed: int, items: int, work: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # each night draws from its own (see `night`)
        self.work = work
        self.paid = 0  # creates the simulator accepted over the whole soak
        self.out = work / "disk" / "out"
        self.manifest = work / "nightly.yaml"
        self.items: dict[str, int] = {f"s{n:03d}": 0 for n in range(items)}  # id -> version of its prompt
        self.next_id = items
        self.owner: dict[str, str] = {}  # request key -> item id, for every request ever written
        self.tried: Counter[str] = Counter()
        self.held: Counter[str] = Counter()
        self.broken: list[str] = []
        self.deleted: set[str] = set()  # image files the soak deleted (an item no longer listed keeps its gap)
        self.full_disk = False
        self.sim: Simulator | None = None
        self.base: SimConfig | None = None  # the faultless service: each night's knobs start from it

    # ------------------------------------------------------------ the setting

    def mount(self) -> None:
        disk = self.work / "disk"
        disk.mkdir()
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(disk)],
                check=True,
                capture_output=True,
            )
            self.full_disk = True
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else exc
            print(f"note: cannot mount a small tmpfs ({detail}); the full-disk fault is skipped")

    def unmount(self) -> None:
        if self.full_disk:
            subprocess.run(["umount", "-l", str(self.work / "disk")], check=False, capture_output=True)

    def write_manifest(self) -> None:
        lines = []
        for item_id, version in sorted(self.items.items()):
            prompt = f"soak {item_id} v{version}"
            if version % 7 == 3:
                prompt += " [sim:fail-transient:1]"
            elif version % 11 == 5:
                prompt += " [sim:fail-policy]"
            lines.append(f"- id: {item_id}\n  prompt: {json.dumps(prompt)}\n")
            lines.append(f"  output_format: {'jpeg' if version % 3 == 2 else 'png'}\n")
        self.manifest.write_text("".join(lines), encoding="utf-8")
        for item in manifest.load(self.manifest):
            self.owner[request_key(item.request)] = item.id

    def edit_manifest(self) -> None:
        roll = self.rng.random()
        if roll < 0.15:
            for _ in range(self.rng.randint(1, 3)):
                self.items[f"s{self.next_id:03d}"] = 0
                self.next_id += 1
            self.tried["manifest: items added"] += 1
        elif roll < 0.25 and len(self.items) > 3:
            del self.items[self.rng.choice(sorted(self.items))]
            self.tried["manifest: an item removed"] += 1
        elif roll < 0.45:
            victim = self.rng.choice(sorted(self.items))
            self.items[victim] += 1
            self.tried["manifest: a prompt changed"] += 1

    def faults(self, base: SimConfig) -> tuple[SimConfig, list[str]]:
        r = self.rng
        knobs: dict[str, object] = {}
        pick = {
            "error_rate": lambda: r.uniform(0.02, 0.1),
            "drop_rate": lambda: r.uniform(0.01, 0.05),
            "lost_answer_rate": lambda: r.uniform(0.05, 0.3),
            "reuse_id_rate": lambda: r.uniform(0.05, 0.2),
            "truncate_rate": lambda: r.uniform(0.05, 0.3),
            "html_rate": lambda: r.uniform(0.05, 0.3),
            "expired_url_rate": lambda: r.uniform(0.1, 0.5),
            "fail_rate": lambda: r.uniform(0.05, 0.3),
            "null_window": lambda: r.uniform(0.1, 0.5),
            "capacity": lambda: r.randint(2, 5),
            "create_delay": lambda: r.uniform(0.2, 1.5),
            "results_per_task": lambda: 2,
            "echo_token": lambda: True,
            "http200_errors": lambda: True,
            "key_in_result_url": lambda: True,
            "forget_after": lambda: r.uniform(0.0, 1.0),
            "create_status": lambda: r.choice([201, 200]),
        }
        for name in r.sample(sorted(pick), r.randint(0, 4)):
            if name == "key_in_result_url" and r.random() < 0.7:
                continue  # rarer: every item of that night fails bad_result
            knobs[name] = pick[name]()
        if "forget_after" in knobs:
            knobs.update(forget_rate=r.uniform(0.2, 1.0), forget_answer=r.choice(["404", "null"]))
            knobs["create_time_offset"] = 2 * 86400.0 if r.random() < 0.5 else 0.0
        if "create_status" in knobs:
            knobs["create_code"] = r.choice([200, 0])
        if "capacity" in knobs:
            knobs["envelope_429"] = "mixed"
        return replace(base, **knobs), sorted(knobs)  # type: ignore[arg-type]

    # ------------------------------------------------------------ one night

    async def night(self, number: int) -> None:
        assert self.sim is not None
        # The night's own generator: its faults depend on the seed and its number only, not on what earlier
        # nights happened to leave (a file there or not), so a night's knobs are the same in every run of a seed.
        r = self.rng = random.Random(f"{self.seed}/{number}")
        tried: list[str] = []
        self.edit_manifest()
        self.write_manifest()
        assert self.base is not None
        config, knobs = self.faults(self.base)  # restart() reads the ports from the URLs, not the config
        self.sim.config = config
        tried += knobs
        results = self.out / "results.json"
        if results.exists() and r.random() < 0.08:
            results.unlink()
            tried.append("results.json deleted")
        elif results.exists() and r.random() < 0.08:
            data = results.read_bytes()
            results.write_bytes(data[: r.randint(0, max(0, len(data) - 1))])
            tried.append("results.json truncated")
        images = [p for p in self.out.glob("*.*") if p.suffix in (".png", ".jpg")] if self.out.exists() else []
        if images and r.random() < 0.1:
            victim = r.choice(images)
            victim.unlink()
            self.deleted.add(victim.name)
            tried.append("an image deleted")
        filler = self.work / "disk" / "filler"
        if self.full_disk and r.random() < 0.08:
            leave = r.randint(0, 64 * 1024)
            fill(filler, leave)
            tried.append(f"disk full ({leave // 1024} KiB left)")
        args = [
            sys.executable, "-m", "batchgen", "run", str(self.manifest), "--out", str(self.out),
            "--api-base", self.sim.api_url, "--no-progress", "--poll-interval", "0.05",
            "--create-rate", "1000/1", "--poll-rate", "1000", "--task-timeout", "6", "--max-attempts", "2", "-v",
        ]  # fmt: skip
        if r.random() < 0.15:
            args += ["--limit", str(r.randint(0, 4))]
            tried.append("--limit")
        if r.random() < 0.1:
            args += ["--max-runtime", f"{r.uniform(0.5, 3):.1f}"]
            tried.append("--max-runtime")
        if r.random() < 0.2:
            args.append("--retry-failed")
            tried.append("--retry-failed")
        kill = r.choice([None, None, None, signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
        restart = r.random() < 0.08
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGEN_")}
        env.update(BATCHGEN_API_KEY=KEY, XDG_STATE_HOME=str(self.work / "state"))
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        talk = asyncio.ensure_future(proc.communicate())
        if restart:
            await asyncio.sleep(r.uniform(0.1, 1.5))
            await self.sim.restart()
            tried.append("simulator restarted")
        if kill is not None:
            await asyncio.sleep(r.uniform(0.05, 2.5))
            if proc.returncode is None:
                proc.send_signal(kill)
                tried.append(signal.Signals(kill).name)
        hung = False
        try:
            stdout, stderr = await asyncio.wait_for(asyncio.shield(talk), NIGHT_LIMIT)
        except TimeoutError:
            hung = True
            stacks = py_spy(proc.pid)  # where it is stuck, before the kill (an idle main thread: an await)
            proc.kill()
            stdout, stderr = await talk
            tail = stderr.decode(errors="replace").splitlines()[-HANG_TAIL:]
            print(f"night {number:3d}: HUNG; its last {len(tail)} stderr lines:", *tail, sep="\n  ", flush=True)
            print(stacks, flush=True)
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        for name in tried:
            self.tried[name.split(" (")[0]] += 1
        code = proc.returncode
        log = stdout.decode(errors="replace") + stderr.decode(errors="replace")
        problems = self.check(code, log, killed=kill is not None and "SIG" in " ".join(tried), tried=tried)
        if hung:
            problems.insert(0, f"still running after {NIGHT_LIMIT:g} s")
        verdict = "ok" if not problems else "BROKEN: " + "; ".join(problems)
        print(f"night {number:3d}: exit {code:>4} | {', '.join(tried) or 'no faults'} | {verdict}", flush=True)
        self.broken += [f"night {number}: {p}" for p in problems]

    # ------------------------------------------------------------ the invariants

    def check(self, code: int | None, log: str, *, killed: bool, tried: list[str]) -> list[str]:
        assert self.sim is not None
        problems: list[str] = []

        def hold(name: str, ok: bool, why: str) -> None:
            if ok:
                self.held[name] += 1
            else:
                problems.append(f"{name}: {why}")

        hold("crash", "Traceback" not in log, "a traceback: " + log[log.find("Traceback") :][:300])
        # Death by the signal itself: SIGKILL, or SIGTERM/SIGINT before batchgen has taken the signal over (while
        # Python starts); either way the state must be whole, which the checks below hold it to.
        sent = next((-int(getattr(signal, n)) for n in ("SIGTERM", "SIGINT") if n in tried), -signal.SIGKILL)
        hold("crash", code is not None and (code in SPEC_EXITS or code in (-signal.SIGKILL, sent)), f"exit {code}")
        # A usage error is the harness's own fault (its command line, its key) unless the ledger was damaged: the
        # soak once ran every night into exit 2 (a key with a space) and still said "every invariant held".
        last = next((line for line in reversed(log.splitlines()) if "error" in line), "")
        hold("usage", code != 2 or "results.json" in log, f"exit 2: {last[-300:]}")
        forms = {KEY, quote(KEY, safe=""), quote(KEY), quote_plus(KEY)}
        hold("key", not any(f in log for f in forms), "the key in a log line")
        if not self.out.exists():
            return problems
        try:
            loaded = ledger.load(self.out)
        except LedgerError as exc:
            hold("ledger", False, f"does not load: {exc}")
            return problems
        self.held["ledger"] += 1
        creates: Counter[str] = Counter()
        for key, count in self.sim.stats.creates_by_request.items():
            creates[self.owner.get(key, f"?{key}")] += count
        for item_id in sorted(set(creates) | set(loaded.items)):
            record = loaded.items.get(item_id)
            paid = record.get("paid", 0) if record else 0
            doubt = (record.get("in_doubt", 0) + bool(record.get("submitting"))) if record else 0
            made = creates.get(item_id, 0)
            hold("money", paid <= made <= paid + doubt, f"{item_id}: {made} creates, paid {paid}, in doubt {doubt}")
        ids = [item.id for item in manifest.load(self.manifest)]
        credited: dict[str, str] = {}
        for item_id, record in loaded.items.items():
            for name, digest in zip(record["files"], record["sha256"], strict=False):
                if credited.setdefault(name.casefold(), item_id) != item_id:
                    hold("files", False, f"{name} credited to {credited[name.casefold()]} and {item_id}")
                path = self.out / name
                if not path.exists():
                    # Missing is fine only where the run could not fetch it again: a kill, a full disk, or an
                    # item no longer in the manifest (kept untouched by SPEC).
                    unlisted = item_id not in ids and name in self.deleted
                    gone = unlisted or killed or "disk full" in " ".join(tried)
                    hold("ledger", gone, f"{item_id}: {name} missing and not fetched again")
                    continue
                hold("ledger", hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{name}: sha256 differs")
        for path in self.out.iterdir():
            if path.suffix in (".png", ".jpg") and path.name.casefold() not in credited:
                own = any(path.stem.split("~")[0].startswith(i) for i in loaded.items)
                hold("files", own, f"{path.name}: no item's file")
        for path in self.out.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                data = path.read_bytes()
                hold("key", not any(f.encode() in data for f in forms), f"the key in {path}")
        counts = dict.fromkeys(ledger.STATES, 0)
        for item_id in ids:
            if item_id in loaded.items:
                counts[loaded.items[item_id]["state"]] += 1
            else:
                counts["pending"] += 1
        if not killed and code in (0, 1, 5):
            disk = any(t.startswith("disk full") for t in tried)
            hold("exit", code == exit_code(counts) or (disk and code == 5), f"exit {code}, ledger says {counts}")
        return problems


def py_spy(pid: int) -> str:
    """The Python stacks of a stuck run (`py-spy dump`, when py-spy is installed and may attach), for the report."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no py-spy dump: {exc})"
    return done.stdout + done.stderr


def fill(filler: Path, leave: int) -> None:
    """Fill the tmpfs but for `leave` bytes."""
    stat = os.statvfs(filler.parent)
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    work = Path(tempfile.mkdtemp(prefix="batchgen-soak-"))
    s = Soak(seed, args.items, work)
    print(f"soak: {args.nights} nights, seed {seed}, {args.items} items to start with, in {work}")
    s.mount()
    base = SimConfig(api_key=KEY, latency=0.4, jitter=0.2, image_scale=0.05, rate=None, url_ttl=60.0, random_seed=seed)
    started = time.monotonic()
    try:
        async with Simulator(base) as sim:
            s.sim, s.base = sim, base
            for number in range(1, args.nights + 1):
                await s.night(number)
            s.paid = sim.stats.creates
    finally:
        s.unmount()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsoak: {args.nights} nights in {time.monotonic() - started:.0f} s, seed {seed}")
    print("tried: " + ", ".join(f"{name} x{n}" for name, n in sorted(s.tried.items())))
    print("held:  " + ", ".join(f"{name} x{n}" for name, n in sorted(s.held.items())))
    if not s.paid:
        s.broken.append("no night paid for anything: the soak tried nothing")
    if s.broken:
        print(f"BROKEN ({len(s.broken)}):")
        for line in s.broken[:50]:
            print("  " + line)
        return 1
    print("every invariant held")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nights", type=int, default=200)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="CI: a fixed seed and a few nights")
    args = parser.parse_args()
    if args.quick:
        args.nights, args.seed, args.items = 8, args.seed if args.seed is not None else 20261126, 5
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
