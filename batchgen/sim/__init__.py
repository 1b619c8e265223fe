"""A faithful simulator of the LiangXin jobs API on loopback, for every built-in model card (SPEC sections 1 and 5).

A separate world: it imports the shared field tables (the model cards, `batchgen.models`) and nothing of the
client or the engine, so a misunderstanding of the API cannot hide by being shared between the two sides. Each
model answers by its card: its fields, its result type (PNG, JPEG or WebP) and sizes.

    async with Simulator(SimConfig(latency=0.5)) as sim:
        sim.api_url, sim.files_url, sim.stats

The server (aiohttp.web, Pillow) is imported when first named: `batchgen run` reads only `SimConfig`'s defaults
(its parser describes `batchgen sim`) and has no use for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SimConfig

if TYPE_CHECKING:
    from .model import SimStats
    from .server import Simulator, serve_until_stopped

__all__ = ["SimConfig", "SimStats", "Simulator", "serve_until_stopped"]


def __getattr__(name: str) -> Any:
    """`SimStats`, `Simulator` and `serve_until_stopped`, from their modules when first asked for."""
    if name == "SimStats":
        from .model import SimStats

        return SimStats
    if name in ("Simulator", "serve_until_stopped"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
