"""The one seed mixer of lapa: every derived random stream (shard order, shuffle buffer, augmentation,
per-batch model noise) is seeded by `mix_seed(seed, *where)`, so it depends only on where a run stands and
a resumed run draws exactly what the uninterrupted one drew."""

from __future__ import annotations


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, rank, worker, batch, ...), stable across runs,
    processes and Python versions (no `hash()`): distinct tuples give unrelated seeds."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x632BE5AB) % (1 << 63)
    return value % (1 << 63)  # also for no parts: the start value itself is above 2**63
