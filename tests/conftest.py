from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from batchgen.sim import SimConfig, Simulator

# Small, fast images and short task lifecycles: tests must stay fast and deterministic.
FAST = dict(latency=0.3, jitter=0.05, image_scale=0.05, rate=None, random_seed=1)


@pytest.fixture
def sim_factory() -> Callable[..., AbstractAsyncContextManager[Simulator]]:
    """`async with sim_factory(capacity=2) as sim:` — a simulator on loopback with fast defaults."""

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[Simulator]:
        async with Simulator(SimConfig(**{**FAST, **overrides})) as sim:  # type: ignore[arg-type]
            yield sim

    return start


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write a file under tmp_path and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


# ---------------------------------------------------------------- running batchgen

KEY = "test-key-0123456789"


def make_settings(manifest_path: Path, out: Path, sim: Simulator, **overrides: object):
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


def manifest_of(path: Path, prompts: list[str], **fields: object) -> Path:
    """A YAML manifest with one item per prompt, ids item-00, item-01, ..."""
    lines = []
    for n, prompt in enumerate(prompts):
        lines.append(f"- id: item-{n:02d}\n  prompt: {prompt!r}\n")
        lines.extend(f"  {k}: {v!r}\n" for k, v in fields.items())
    path.write_text("".join(lines), encoding="utf-8")
    return path


async def until(condition: Callable[[], object], deadline: float = 20.0) -> None:
    """Wait until `condition()` is true, checking every 20 ms; fail the test after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What runs learn about a service (batchgen/memory.py) is kept in a temporary directory, never in the
    user's ~/.local/state; subprocesses started by a test inherit it through the environment."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home
