from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from batchgen.sim import SimConfig, Simulator

# Re-exported for tests that still import them from here; their home is helpers.py.
from .helpers import FAST
from .helpers import KEY as KEY
from .helpers import make_settings as make_settings
from .helpers import manifest_of as manifest_of
from .helpers import until as until

# Small, fast images and short task lifecycles: tests must stay fast and deterministic.


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


@pytest.fixture(autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What runs learn about a service (batchgen/memory.py) is kept in a temporary directory, never in the
    user's ~/.local/state; subprocesses started by a test inherit it through the environment."""
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home
