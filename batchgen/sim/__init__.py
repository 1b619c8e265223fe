"""A faithful simulator of the LiangXin jobs API on loopback, for every built-in model card (SPEC sections 1 and 5).

A separate world: it imports the shared field tables (the model cards, `batchgen.models`) and nothing of the
client or the engine, so a misunderstanding of the API cannot hide by being shared between the two sides. Each
model answers by its card: its fields, its result type (PNG, JPEG or WebP) and sizes.

    async with Simulator(SimConfig(latency=0.5)) as sim:
        sim.api_url, sim.files_url, sim.stats
"""

from .config import SimConfig
from .model import SimStats
from .server import Simulator, serve_until_stopped

__all__ = ["SimConfig", "SimStats", "Simulator", "serve_until_stopped"]
