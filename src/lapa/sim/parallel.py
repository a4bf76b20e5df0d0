"""Episode-parallel execution for `sim generate` and `sim eval`.

Each worker process keeps one `TabletopWorld` (one pybullet client) for all its episodes; episodes are
independent and deterministic by seed, so results do not depend on the worker count or the order.
Workers are started with `spawn` (no inherited pybullet or torch state); `workers=0` runs in-process,
which tests and debuggers prefer.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from lapa.sim.world import SimConfig, TabletopWorld

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


def run_parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, desc: str,
                 total: int | None = None) -> Iterator[Any]:
    """Yield `fn(item)` for every item (in completion order) with a progress bar.

    `fn` must be a module-level function (picklable). `workers=0` runs in this process.
    """
    items = list(items)
    bar = tqdm(total=total if total is not None else len(items), desc=desc, unit="ep", dynamic_ncols=True)
    try:
        if workers <= 0 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update(1)
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes=min(workers, len(items))) as pool:
            for result in pool.imap_unordered(fn, items, chunksize=1):
                yield result
                bar.update(1)
    finally:
        bar.close()
