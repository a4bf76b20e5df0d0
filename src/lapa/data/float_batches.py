"""The float stage of every loader (runs in the consuming process): planar uint8 batches from the
DataLoader -> float32 in [0, 1], augmented when training; plus the malloc tuning that makes this fast.

Why in the consumer and not in the workers: workers ship uint8, which moves through shared memory three
times faster than float (measured: 40 vs 131 ms per 32-pair batch), and the conversion with flip and
jitter is one cache-friendly pass per sample into recycled memory (`transforms.to_float`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from torch.utils.data import DataLoader

from lapa.data.batching import RELEASE
from lapa.data.transforms import PairAugment, to_float
from lapa.training.seeding import mix_seed

_MALLOC_TUNED = False


def reuse_freed_memory() -> None:
    """Let glibc keep large freed blocks for reuse (once per process; a no-op off glibc, or with
    LAPA_NO_MALLOC_TUNING set).

    A float batch is tens to hundreds of MB. Above glibc's mmap threshold each one is a fresh mmap
    whose pages fault in on first touch: measured here as the largest single cost of the conversion
    (80 of 90 ms for a 32-pair batch; 12 ms into reused memory). Raising the mmap and trim thresholds
    makes the allocator recycle the previous batches' memory instead.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("LAPA_NO_MALLOC_TUNING"):
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: keep up to 2 GiB of freed heap for reuse
    except (OSError, AttributeError):
        pass


def init_worker(worker_id: int) -> None:
    """DataLoader worker start: the same malloc tuning as the consuming process, so the per-sample
    decode outputs and jitter scratch reuse memory under `spawn` as well (torch's worker loop already
    limits each worker to one thread)."""
    reuse_freed_memory()


class FloatBatches:
    """Iterable over a DataLoader of planar uint8 batches that turns `batch[image_key]` into float32 in
    [0, 1] (`[B, 3, T, H, W]`, or `[B, 3, H, W]` when `single_image`), augmented by `augment` when given,
    and releases the worker's shared buffer (`batching.RELEASE`) once converted.

    Each `epoch(e, first)` is one pass over the DataLoader. Training: the augmentation of batch i of
    epoch e is drawn from `augment.generator` seeded by (seed, e, rank, i), so a resumed run augments
    every batch as the uninterrupted run did. `iter()` is `epoch(0)` (validation, inference).
    """

    def __init__(self, loader: DataLoader, image_key: str, *, single_image: bool = False,
                 augment: PairAugment | None = None, seed: int = 0, rank: int = 0) -> None:
        self.loader, self.image_key, self.single_image = loader, image_key, single_image
        self.augment, self.seed, self.rank = augment, seed, rank

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for a stream without a length (Lightning: unknown length)

    def __iter__(self) -> Iterator[dict]:
        return self.epoch(0)

    def epoch(self, epoch: int, first: int = 0) -> Iterator[dict]:
        """One pass over the DataLoader, whose batches are batches `first, first + 1, ...` of `epoch`
        (`first` > 0: a resumed stream that skips the batches already trained on)."""
        reuse_freed_memory()
        generator = self.augment.generator if self.augment is not None else None
        for index, batch in enumerate(self.loader, start=first):
            if generator is not None:
                generator.manual_seed(mix_seed(self.seed, epoch, self.rank, index))
            release = batch.pop(RELEASE, None)
            images = to_float(batch[self.image_key], self.augment)  # [B, 3, T, H, W]
            batch[self.image_key] = images[:, :, 0] if self.single_image else images
            if release is not None:
                release.fill_(1)  # the worker may now refill this buffer
            yield batch
