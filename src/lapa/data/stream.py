"""The training sample stream: a pure function of (seed, epoch, rank, worker), so that a resumed run
rebuilds the stream of the epoch it stopped in and skips what was already trained on.

Per epoch and DataLoader worker:
    shard order   plain: one seeded permutation per epoch (the same on every rank), then shards
                  `rank::world`, then `worker::workers`;  resampled (DDP): shards drawn with
                  replacement, seeded per (epoch, rank, worker), `batches_per_worker` batches each
    samples       `tar_reader.read_shards`, then a seeded shuffle buffer
    batches       the decode stage (`batching.Batches`), after skipping this worker's share of the
                  batches a resumed run already consumed (grouped, not decoded)

WebDataset's `detshuffle` and `ResampledShards` keep their epoch counters inside the worker processes
(and `shuffle` seeds from the clock unless handed a generator), so a restarted process cannot rebuild
their order; here the epoch comes from the outside and seeds every generator.

Skipping assumes the DataLoader's round robin over workers (batch i comes from worker i % workers),
which holds while every worker still has batches: always for resampled streams, and for plain streams
until the first worker runs out near the end of an epoch.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds

from lapa.training.seeding import mix_seed


def worker_share(consumed: int, worker: int, workers: int) -> int:
    """How many of the first `consumed` batches of a round robin over `workers` came from `worker`."""
    return len(range(worker, consumed, workers))


@dataclass
class StreamPosition:
    """Where a stream starts: its first epoch, and the batches of that epoch already consumed (all
    workers of this rank together)."""

    epoch: int = 0
    batches: int = 0


class TrainStream(torch.utils.data.IterableDataset):
    """Iterable over training batches of one rank; each `iter()` is the next epoch (see module doc).

    `read(urls)` yields raw samples of shard urls; `batches(samples, skip)` groups and decodes them
    into batches after skipping `skip` batches. `batches_per_worker`: resampled epoch length (None for
    a plain stream, which ends with its shards). Picklable: DataLoader workers get copies, each
    counting its own epochs, which persistent workers keep from one epoch to the next.
    """

    def __init__(self, urls: list[str], read: Callable[[Iterable[str]], Iterable[dict]],
                 batches: Callable[[Iterable[dict], int], Iterator[dict]], *, seed: int, rank: int,
                 world: int, shard_shuffle: bool, shuffle_buffer: int, batches_per_worker: int | None,
                 num_workers: int, start: StreamPosition | None = None) -> None:
        super().__init__()
        self.urls, self.read, self.batches = urls, read, batches
        self.seed, self.rank, self.world = seed, rank, world
        self.shard_shuffle, self.shuffle_buffer = shard_shuffle, shuffle_buffer
        self.batches_per_worker, self.num_workers = batches_per_worker, max(1, num_workers)
        self.start = start or StreamPosition()
        self._epochs_started = 0  # in this process (a worker's copy counts its own)

    def __len__(self) -> int:
        if self.batches_per_worker is None:
            raise TypeError("a plain (not resampled) stream has no length")
        return self.batches_per_worker * self.num_workers

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        epoch = self.start.epoch + self._epochs_started
        consumed = self.start.batches if self._epochs_started == 0 else 0
        self._epochs_started += 1
        # The DataLoader asks its workers in turn from worker 0 on; the uninterrupted run's next batch
        # came from worker `consumed % workers`: so DataLoader worker i plays that run's worker
        # (i + consumed) % workers (in a fresh epoch, worker i itself).
        worker = ((info.id if info is not None else 0) + consumed) % self.num_workers
        skip = worker_share(consumed, worker, self.num_workers)
        rng = random.Random(mix_seed(self.seed, epoch, self.rank, worker))
        samples = self._read_checked(self._shards(epoch, worker, rng))
        if self.shuffle_buffer > 0:  # WebDataset's shuffle buffer, drawing from this stream's generator
            samples = wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)(samples)
        batches = self.batches(samples, skip)
        if self.batches_per_worker is not None:
            batches = itertools.islice(batches, max(0, self.batches_per_worker - skip))
        yield from batches

    def _read_checked(self, urls: Iterator[str]) -> Iterator[dict]:
        """`read(urls)`, but a resampled stream that draws shard after shard without getting a sample
        (every shard unreadable) fails instead of drawing forever."""
        limit = max(10, 2 * len(self.urls))
        draws_without_sample = 0

        def counted(urls: Iterator[str]) -> Iterator[str]:
            nonlocal draws_without_sample
            for url in urls:
                if draws_without_sample >= limit:
                    raise RuntimeError(f"no readable sample in {limit} shards drawn in a row from "
                                       f"{len(self.urls)} shards (e.g. {url}); see the warnings above")
                draws_without_sample += 1
                yield url

        for sample in self.read(counted(urls)):
            draws_without_sample = 0
            yield sample

    def _shards(self, epoch: int, worker: int, rng: random.Random) -> Iterator[str]:
        if self.batches_per_worker is not None:  # resampled: an endless draw, cut by the epoch length
            return (rng.choice(self.urls) for _ in itertools.count())
        order = list(self.urls)
        if self.shard_shuffle:  # the same permutation on every rank and worker: the splits partition it
            random.Random(mix_seed(self.seed, epoch)).shuffle(order)
        return iter(order[self.rank::self.world][worker::self.num_workers])
