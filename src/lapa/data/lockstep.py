"""Equal batch counts on every rank for evaluation (a sharded model needs them).

Under FSDP every forward pass is a collective (it gathers the layers' parameters), so every rank must run
the same number of them. Validation shards are split between ranks (`rank::world`) and rarely hold the
same number of batches: a rank that stops early would hang the others. `lockstep` makes every rank yield
as many batches as the rank with the most; a rank out of batches yields a dummy one, which the caller runs
and then ignores. One all-reduce (max) per batch when there are several ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from lapa.training.fabric import all_reduce_

# The key a dummy batch carries (True) in `LockstepBatches`: run it, then drop its results.
DUMMY_KEY = "lockstep_dummy"


def lockstep(batches: Iterable[Any], dummy: Callable[[], Any], limit: int | None,
             world: int) -> Iterator[tuple[Any, bool]]:
    """(batch, is_real) pairs: every rank yields the same number of them (the largest number of real
    batches any rank has, capped at `limit`), ranks out of batches yield `dummy()` with is_real False.
    Collective when `world` > 1: call it on every rank."""
    it = iter(batches)
    n = 0
    while limit is None or n < limit:
        batch = next(it, None)
        if world > 1:
            more = all_reduce_(torch.tensor([int(batch is not None)]), op="max")
            if not int(more):
                return
        elif batch is None:
            return
        n += 1
        yield (batch, True) if batch is not None else (dummy(), False)


class LockstepBatches:
    """Batches (dicts) of one rank in lockstep with the other ranks, for loops that take a plain iterable
    (Lightning's validation): a dummy batch is `dummy()` with `DUMMY_KEY` set to True."""

    def __init__(self, batches: Iterable[dict], dummy: Callable[[], dict], world: int) -> None:
        self.batches, self.dummy, self.world = batches, dummy, world

    def __iter__(self) -> Iterator[dict]:
        for batch, real in lockstep(self.batches, self.dummy, None, self.world):
            yield batch if real else {**batch, DUMMY_KEY: True}


def is_dummy(batch: dict) -> bool:
    """Whether `batch` is a dummy from `LockstepBatches` (run it for the collectives, drop its results)."""
    return bool(batch.get(DUMMY_KEY, False))
