"""Episode-parallel execution for `sim generate` and `sim eval`: one world per worker process.

Each worker process keeps one `TabletopWorld` (one pybullet client) for all its episodes; episodes are
independent and deterministic by seed, so results do not depend on the worker count or the order. The
processes themselves come from `lapa.parallel` (spawned; `workers=0` runs in-process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lapa.parallel import parallel_map
from lapa.sim.config import SimConfig
from lapa.sim.world import TabletopWorld

_WORLD: TabletopWorld | None = None
_WORLD_CFG: SimConfig | None = None


def process_world(cfg: SimConfig) -> TabletopWorld:
    """The calling process's world for `cfg` (created once, rebuilt if the config differs)."""
    global _WORLD, _WORLD_CFG
    if _WORLD is None or _WORLD_CFG != cfg:
        if _WORLD is not None:
            _WORLD.close()
        _WORLD, _WORLD_CFG = TabletopWorld(cfg), cfg
    return _WORLD


def run_episodes(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, desc: str) -> Iterator[Any]:
    """Yield `fn(job)` for every episode job as episodes finish (completion order: each result names its
    episode), over `workers` processes (`workers=0`: in-process), with a progress bar in episodes."""
    return parallel_map(fn, jobs, workers, desc=desc, unit="ep", ordered=False)
