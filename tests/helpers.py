"""The tests' shared library: one home for what several test modules need (issue 19). No test module imports
another test module; they import from here (and fixtures come from conftest.py).

- running batchgen in-process (`run`, `make_settings`) or as a user does, in a subprocess (`run_args`, `cli`,
  `start`, `finish`, `env`; `batchgen` to its end), and reading what it left (`results`, `check_directory`);
- manifests (`manifest_of`) and the problems a bad one gives (`problems`);
- a test's own HTTP server on loopback (`serve`, `answering`), a small disk (`small_disk`), an empty ledger
  (`a_ledger`);
- waiting on a condition with a deadline (`until`), never a sleep to synchronise.

One file per theme: the ledger rebuilt is tested in test_rebuild.py, a full disk in test_full_disk.py, the
key's leaks in test_key_leaks.py; a new test of one of them goes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import os
import random
import resource
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from batchgen import endactions, ledger, manifest, runner
from batchgen.config import RetryPolicy
from batchgen.errors import ManifestError
from batchgen.limits import Hints, Throttle
from batchgen.progress import Reporter

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"
BATCHGEN = [sys.executable, "-m", "batchgen"]  # the command, as a user runs it


# ---------------------------------------------------------------- waiting


async def until(
    condition: Callable[[], Any], deadline: float = 20.0, *, every: float = 0.02, what: str = "condition not reached"
) -> Any:
    """Wait until `condition()` (a function, or a coroutine function) gives a true value, and return it; check
    every `every` seconds; fail the test with `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < end, what
        await asyncio.sleep(every)


def process_ended(pid: int) -> bool:
    """Whether the process `pid` has ended: gone, or a zombie (no parent left to reap it yet)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):  # gone, even between the signal and the read (ESRCH)
        return True


async def outlived(pid: int, deadline: float, what: str) -> None:
    """Fail the test with `what` if `pid` still runs after `deadline` seconds; SIGKILL it in any case."""
    try:
        await until(lambda: process_ended(pid), deadline=deadline, what=what)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def a_summary(tmp_path: Path, failed: int = 0) -> endactions.Summary:
    """The summary a night's end gets: one item succeeded (and `failed` failed for good)."""
    return endactions.Summary(
        code=1 if failed else 0,
        meaning="finished, and some items failed for good" if failed else "every item succeeded",
        manifest=str(tmp_path / "m.yaml"),
        directory=str(tmp_path),
        counts={"pending": 0, "submitted": 0, "succeeded": 1, "failed": failed},
        figures={"paid_creates": 1},
        failures=[],
    )


# ---------------------------------------------------------------- manifests


def manifest_of(path: Path, prompts: list[str], **fields: object) -> Path:
    """A YAML manifest with one item per prompt, ids item-00, item-01, ..."""
    lines = []
    for n, prompt in enumerate(prompts):
        lines.append(f"- id: item-{n:02d}\n  prompt: {prompt!r}\n")
        lines.extend(f"  {k}: {v!r}\n" for k, v in fields.items())
    path.write_text("".join(lines), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    """The problems a manifest is refused with, as printed."""
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    return [str(p) for p in info.value.problems]


# ---------------------------------------------------------------- in-process runs


def make_settings(manifest_path: Path, out: Path, sim: Any, **overrides: object) -> Any:
    """RunSettings for a fast run against `sim`: short polls and back-offs, no progress bar."""
    from batchgen.config import PollSchedule, RetryPolicy, RunSettings, Secret

    values: dict[str, object] = dict(
        manifest=manifest_path,
        out=out,
        api_base=sim.api_url,
        api_key=Secret(KEY),
        poll=PollSchedule(0.05),
        create_rate=(1000, 1.0),
        poll_rate=1000.0,
        progress=False,
        retry=RetryPolicy(calls=8, wait_initial=0.05, wait_max=0.4, wait_jitter=0.05),
    )
    values.update(overrides)
    return RunSettings(**values)  # type: ignore[arg-type]


async def run(settings: Any, stream: io.StringIO | None = None, *, verbose: bool = True) -> runner.Outcome:
    """One run in-process; its log lines (debug lines too, unless not `verbose`) go to `stream`, or nowhere."""
    return await runner.run(settings, Reporter(stream=stream or io.StringIO(), verbose=verbose, progress=False))


def results(out: Path) -> dict[str, Any]:
    """DIR/results.json as a document."""
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def check_directory(out: Path) -> dict[str, Any]:
    """After any kill: results.json (if any) is complete JSON; every image under a final name is whole."""
    if (out / "results.json").exists():
        json.loads((out / "results.json").read_text())
    loaded = ledger.load(out)
    for image_path in [*out.glob("*.png"), *out.glob("*.jpg")]:
        with Image.open(image_path) as image:
            image.load()
    return dict(loaded.items)


def a_ledger(directory: Path) -> Path:
    """An empty ledger (results.json and .batchgen/) in `directory`."""
    with ledger.Ledger.open(directory, "m.yaml"):
        pass
    return directory


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` (a nearly full disk), or the test is skipped where mount is not permitted."""
    path.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("this machine does not let us mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------- the CLI in a subprocess


def env(**extra: str) -> dict[str, str]:
    """The environment of a batchgen subprocess: no BATCHGEN_* of the caller's, the test key."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGEN_")}
    return {**base, "BATCHGEN_API_KEY": KEY, **extra}


def run_args(path: Path, out: Path, sim: Any, *extra: str) -> list[str]:
    """`batchgen run` against `sim` (a simulator, or any service's base URL), at the test pace."""
    return [
        *BATCHGEN,
        "run",
        str(path),
        "--out",
        str(out),
        "--api-base",
        sim if isinstance(sim, str) else sim.api_url,
        "--poll-interval",
        "0.05",
        "--create-rate",
        "1000/1",
        "--poll-rate",
        "1000",
        *extra,
    ]


MEMORY_CAP = 2 * 1024**3  # bytes of address space: ample for batchgen, far below what /dev/zero would take


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def batchgen(*args: str, extra_env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`python -m batchgen ARGS` to its end, under a memory cap (an unbounded read fails the test, not the
    machine): stdin closed, stderr (and stdout, unless given) captured as text, the test environment."""
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [*BATCHGEN, *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**(extra_env or {})),
        preexec_fn=capped,
        timeout=120,
        **kw,
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "a bug in batchgen" not in proc.stderr, proc.stderr


async def start(args: list[str], **kw: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=kw.pop("env", env()),
        **kw,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli(args: list[str], **kw: Any) -> tuple[int, str, str]:
    """Run the command to its end: (exit code, stdout, stderr)."""
    return await finish(await start(args, **kw))


# The real CLI with one object broken: `python -c INJECT.format(error=...)` raises `error` from every download.
INJECT = """
import sys
import batchgen.cli, batchgen.download

async def broken_fetch(*args, **kwargs):
    raise {error}

batchgen.download.fetch = broken_fetch
sys.exit(batchgen.cli.main(sys.argv[1:]))
"""


def env_without_config(**extra: str) -> dict[str, str]:
    """`env`, without XDG_CONFIG_HOME and HOME unless given: no user model cards are found by accident."""
    base = env(**extra)
    for name in ("XDG_CONFIG_HOME", "HOME"):
        if name not in extra:
            base.pop(name, None)
    return base


# An --on-finish hook that records what it was given (its stdin, argv, environment, whether DIR was locked)
HOOK = """\
import fcntl, json, os, sys
out = sys.argv[1]
doc = json.load(sys.stdin)
locked = None  # no lock file: the run never got to DIR
lock_file = os.path.join(os.environ["BATCHGEN_DIR"], ".batchgen", "lock")
if os.path.exists(lock_file):
    try:
        fcntl.flock(os.open(lock_file, os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = False
    except BlockingIOError:
        locked = True
with open(out, "w") as f:
    json.dump({"doc": doc, "argv": sys.argv, "env": dict(os.environ), "dir_locked": locked}, f)
print("first line", file=sys.stderr)
print("the hook's last word \\x1b]0;retitled\\x07", file=sys.stderr)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


# Test code driving the real ladder: the real CLI in a subprocess, with one broken object put in place of the
# download step, so that an exception batchgen never expects is raised deep inside the run's TaskGroup.
def injected(error: str, args: list[str]) -> list[str]:
    return [sys.executable, "-c", INJECT.format(error=error), *args[3:]]  # args[:3] is python -m batchgen


# A server of the test's own on loopback (a hostile file host, a firewall, a monitor, a service that answers one
# thing): an aiohttp Application, or one handler for every method and path.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(app: web.Application | Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port for the block; give its base URL (`http://127.0.0.1:PORT`)."""
    if not isinstance(app, web.Application):
        handler, app = app, web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def answering(status: int, body: str, content_type: str) -> contextlib.AbstractAsyncContextManager[str]:
    """`serve` a service that gives every request the same answer."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    return serve(handler)


# What a page shows, read in Chromium (tests/browser.py)
COUNT_CARDS = "document.querySelectorAll('#grid .card').length"
SHOWN_IDS = "Array.from(document.querySelectorAll('#grid .card')).map(c => c.dataset.id)"
LIGHTBOX = (
    "(() => { const b = document.getElementById('lightbox'); return b.hidden ? null : "
    "document.querySelector('#lb-info h2').textContent; })()"
)


# Talking to the simulator over raw HTTP (its own tests)
AUTH_HEADERS = {"Authorization": "Bearer test-key"}  # what a client of the simulator sends (raw HTTP tests)
CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"


def sim_body(prompt: str = "A city by the sea", **extra: Any) -> dict[str, Any]:
    return {"model": "imagen4-ultra", "input": {"prompt": prompt, **extra}}


async def create(
    session: aiohttp.ClientSession, sim, payload: dict[str, Any] | None = None, headers: dict[str, str] = AUTH_HEADERS
) -> tuple[int, Any]:
    async with session.post(sim.api_url + CREATE, json=payload or sim_body(), headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def record(session: aiohttp.ClientSession, sim, task_id: str) -> tuple[int, Any]:
    async with session.get(sim.api_url + RECORD, params={"taskId": task_id}, headers=AUTH_HEADERS) as r:
        return r.status, await r.json()


async def wait_state(session, sim, task_id: str, states: set[str], deadline: float = 10.0) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, answer = await record(session, sim, task_id)
        return answer["data"] if status == 200 and answer["data"]["state"] in states else None

    return await until(reached, deadline, every=0.05, what=f"task {task_id} never reached {states}")


# The simulator with fast defaults, for tests (sim_factory)
FAST = dict(latency=0.3, jitter=0.05, image_scale=0.05, rate=None, random_seed=1)


# The throttle on an injected clock (limits.py, polls.py: unit tests that never sleep)
class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def throttle(clock: Clock, *, poll_rate: float = 8.0, concurrency: int = 100, hints: Hints | None = None) -> Throttle:
    return Throttle(
        concurrency=concurrency,
        create_rate=(20, 10.0),
        poll_rate=poll_rate,
        retry=RetryPolicy(wait_initial=1, wait_max=8, wait_jitter=0.5),
        hints=hints,
        clock=clock,
        rng=random.Random(1),
    )


def run_tasks(t: Throttle, n: int) -> None:
    """n tasks running at the service, each holding its in-flight slot (the limiter's one count)."""
    for _ in range(n):
        t.limiter.in_flight += 1
        t.limiter.started()


def accept(t: Throttle, n: int) -> None:
    """n creates the service accepted just now (their window places count from their answer)."""
    for _ in range(n):
        t.window.done(t.window.take())
        t.on_create_success()
