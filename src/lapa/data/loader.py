"""Loaders over WebDataset shards that need no Lightning: `train_loader`, `eval_loader`,
`frame_pair_loader` (spec 2.1.2), and their settings `DataConfig`.

Training pipeline per DataLoader worker (spec order; `stream.TrainStream`, seeded per epoch, rank and
worker so that a resumed run continues exactly where it stopped):
  shard list -> [shard shuffle, split by rank, split by worker]  or  resampled shards (DDP)
  -> tar samples (`tar_reader.read_shards`) -> sample shuffle buffer -> the format's validation and
  decode (simplejpeg) into a planar uint8 batch [B, 3, T, H, W] (`batching.Batches`)
  ... then in the consuming process (`float_batches.FloatBatches`): flip (formats that allow it), colour
  jitter, erasing and uint8 -> float32 in [0, 1], fused per sample (`transforms.to_float`).
Validation and inference read shards in order (split by rank, then by worker; no shuffling).

The shard format (`formats.ShardFormat`: `frame_pairs.FRAME_PAIRS`, `latent_labelled.LATENT_LABELLED`,
`robot_steps.ROBOT_STEPS`) decides the parts read, the validation and the batch layout.

Under DDP every rank must run the same number of batches (a rank that stops early hangs the others in
all-reduce), so training there uses resampled shards and a fixed epoch length per worker
(`resampled=True`): each rank/worker samples shards with its own seeded RNG and stops after exactly
the same count. On one process the exact split (every sample once per epoch) is used.
Corrupt samples and unreadable tars are skipped with a warning and counted (`skips.skipped_samples()`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tarfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lapa.config import require
from lapa.data import frame_pairs
from lapa.data.batching import Batches
from lapa.data.float_batches import FloatBatches, init_worker
from lapa.data.formats import ShardFormat
from lapa.data.frame_pairs import FRAME_PAIRS
from lapa.data.shards import list_shards
from lapa.data.stream import StreamPosition, TrainStream
from lapa.data.tar_reader import read_shards
from lapa.data.transforms import PairAugment
from lapa.training.cluster import dist_env

log = logging.getLogger(__name__)

ShardSpec = str | os.PathLike | Iterable[str | os.PathLike]  # what `shards.list_shards` accepts


@dataclass
class DataConfig:
    """Shards and loader settings (conf/data/*.yaml). `batch_size` is per device."""

    train_shards: str = "data/frames/train"  # folder, glob, brace pattern or file
    val_shards: str | None = "data/frames/val"  # null: no validation data
    batch_size: int = 32  # samples per batch on each device
    num_workers: int = 2  # data-loader processes per device
    image_size: int = 256  # shards of another size are resized (shorter side, centre crop)
    shuffle_buffer: int = 1000  # samples mixed across shards before batching
    shard_shuffle: bool = True  # shuffle the shard order every epoch
    resampled: bool | None = None  # null: true under DDP (equal batch counts per rank), else false
    epoch_size: int | None = None  # samples per epoch over all ranks when resampled; null: count shards
    hflip: bool = True  # only for formats that allow flips (frame pairs); never for latent/robot labels
    color_jitter: float = 0.1  # brightness/contrast/saturation strength; 0 = off
    random_erasing: float = 0.0  # probability per sample
    prefetch_factor: int = 4  # batches prefetched per worker
    seed: int = 0  # shard order, shuffle buffer and augmentations
    # Stage 3: train on only N whole episodes of robot-step shards, chosen by `episodes_seed`
    # (`lapa.data.episodes.choose_episodes`); null: every episode. Validation keeps every held-out episode.
    max_episodes: int | None = None
    episodes_seed: int = 0

    def __post_init__(self) -> None:
        require(bool(self.train_shards), "data.train_shards", self.train_shards, "must name shards")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        require(8 <= self.image_size <= 4096, "data.image_size", self.image_size, "must be in 8..4096")
        require(self.shuffle_buffer >= 0, "data.shuffle_buffer", self.shuffle_buffer, "must be >= 0")
        require(self.epoch_size is None or self.epoch_size >= 1, "data.epoch_size", self.epoch_size,
                "must be >= 1 or null")
        require(0 <= self.color_jitter < 1, "data.color_jitter", self.color_jitter, "must be in [0, 1)")
        require(0 <= self.random_erasing <= 1, "data.random_erasing", self.random_erasing,
                "must be in [0, 1]")
        require(self.prefetch_factor >= 1, "data.prefetch_factor", self.prefetch_factor, "must be >= 1")
        require(self.max_episodes is None or self.max_episodes >= 1, "data.max_episodes", self.max_episodes,
                "must be >= 1 or null (every episode)")
        require(isinstance(self.episodes_seed, int), "data.episodes_seed", self.episodes_seed, "must be an integer")


def count_samples(urls: list[str]) -> int:
    """Samples in local tar shards, counted from the tar headers (`.json` members: every format has
    one), without reading data."""
    total = 0
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            raise ValueError(f"cannot count samples in remote shard {url}; set data.epoch_size")
        with tarfile.open(url) as tar:
            total += sum(1 for m in tar if m.name.endswith(".json"))
    return total


def _rank_world(rank: int | None, world: int | None) -> tuple[int, int]:
    env = dist_env() if rank is None or world is None else None
    return (env.rank if rank is None else rank), (env.world_size if world is None else world)


def _batches(cfg: DataConfig, fmt: ShardFormat, partial_last: bool) -> Batches:
    """The decode + batching stage of `fmt` (picklable into spawned workers)."""
    return Batches(fmt.image_parts, batch_size=cfg.batch_size, size=cfg.image_size, partial_last=partial_last,
                   fields=fmt.fields, collate=fmt.collate,
                   in_flight=cfg.prefetch_factor + 2)  # prefetched, being converted, being filled


def _dataloader(dataset: IterableDataset, num_workers: int, prefetch_factor: int,
                persistent: bool) -> DataLoader:
    """A DataLoader of a dataset that yields whole batches."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers,
                      persistent_workers=persistent and num_workers > 0,  # keeps resampling epochs distinct
                      worker_init_fn=init_worker if num_workers > 0 else None,
                      prefetch_factor=prefetch_factor if num_workers > 0 else None)


# ---- training -------------------------------------------------------------------------------------------
class TrainLoader:
    """The training batches of one rank; each `iter()` is the next epoch of the stream.

    Yields float batches (`FloatBatches`) of `fmt`, and knows its exact stream position: `position()`
    is where a restarted loader must start to give exactly the batches this one would give next.
    In a plain loop the batch handed out is the batch trained on, so the position moves past a batch
    when the consumer takes it. A consumer that prefetches (Lightning takes one batch ahead) builds the
    loader with `explicit_marks=True` and calls `mark_trained()` when a batch enters a training step.
    `state_dict()` / `load_state_dict()` save and restore the position together with a fingerprint of
    what the stream's order depends on; a state of another stream restarts its epoch from the start.
    """

    def __init__(self, cfg: DataConfig, fmt: ShardFormat, urls: list[str], *, rank: int, world: int,
                 start: StreamPosition | None = None, explicit_marks: bool = False) -> None:
        self.cfg, self.fmt, self.urls = cfg, fmt, urls
        self.rank, self.world, self.explicit_marks = rank, world, explicit_marks
        self.resampled = world > 1 if cfg.resampled is None else cfg.resampled
        self.read = read_shards  # tar samples of a shard list (`stream.TrainStream`'s reader)
        self.episodes: frozenset[str] | None = None  # data.max_episodes: the chosen episode ids
        chosen_steps: int | None = None
        if cfg.max_episodes is not None:
            from lapa.data.episodes import KeepEpisodes, choose_episodes, read_episodes, scan_episodes

            choice = choose_episodes(scan_episodes(urls), cfg.max_episodes, cfg.episodes_seed)
            self.urls, self.episodes, chosen_steps = choice.urls, choice.ids, choice.steps
            self.read = functools.partial(read_episodes, keep=KeepEpisodes(choice.ids))
        self.batches_per_worker: int | None = None  # resampled: the same on every rank and worker
        if self.resampled:
            samples = cfg.epoch_size or chosen_steps or count_samples(self.urls)
            per_rank = max(1, samples // (world * cfg.batch_size))
            self.batches_per_worker = math.ceil(per_rank / max(1, cfg.num_workers))
        self._restart(start or StreamPosition())

    def _restart(self, start: StreamPosition) -> None:
        self.start = start
        self._floats: FloatBatches | None = None  # built on the first iter(), streaming from `start`
        self._epochs_started = 0
        # Batches handed out but not yet trained on (`explicit_marks`), as (epoch, index); the position
        # after the last batch consumed; the length of each epoch whose iterator ran out.
        self._pending: deque[tuple[int, int]] = deque()
        self._consumed = start
        self._epoch_length: dict[int, int] = {}
        self._stream_next: StreamPosition | None = start  # where the built stream's next epoch starts

    def __len__(self) -> int:
        """Batches per (full) epoch of a resampled stream; a plain stream has no length (TypeError)."""
        if self.batches_per_worker is None:
            raise TypeError("a plain (not resampled) stream has no length")
        return self.batches_per_worker * max(1, self.cfg.num_workers)

    @property
    def dataloader(self) -> DataLoader:
        """The DataLoader under the float stage (its batches are planar uint8)."""
        return self._float_batches().loader

    def __iter__(self) -> Iterator[dict]:
        # Every iteration continues after the last batch consumed. When the stream has gone past that
        # point (an earlier iterator was abandoned after fetching batches nobody trained on: Lightning
        # does this when it resumes from a checkpoint taken at the end of an epoch), it is rebuilt
        # there, so no batch is skipped and none repeated. (A generator: this runs at the first next().)
        start = self.position()
        if self._floats is not None and start != self._stream_next:
            self._floats = None
        if self._floats is None:
            self.start, self._epochs_started = start, 0
        floats = self._float_batches()
        epoch = self.start.epoch + self._epochs_started
        first = self.start.batches if self._epochs_started == 0 else 0
        self._epochs_started += 1
        self._stream_next = None  # unknown until this iterator runs out
        self._pending.clear()  # batches of an abandoned iterator are never trained on
        count = first
        length = len(self) if self.batches_per_worker is not None else None  # resampled: known in advance
        for index, batch in enumerate(floats.epoch(epoch, first), start=first):
            count = index + 1
            if count == length:  # the epoch's last batch: a consumer that knows the length (Lightning)
                self._epoch_length[epoch] = count  # never asks for more, so record the end now
                self._stream_next = StreamPosition(epoch + 1, 0)
            if self.explicit_marks:
                self._pending.append((epoch, index))
            else:
                self._consumed = StreamPosition(epoch, index + 1)
            yield batch
        self._epoch_length[epoch] = count
        self._stream_next = StreamPosition(epoch + 1, 0)

    def mark_trained(self) -> None:
        """(`explicit_marks` only) The oldest handed-out batch enters a training step."""
        if self._pending:
            epoch, index = self._pending.popleft()
            self._consumed = StreamPosition(epoch, index + 1)

    def position(self) -> StreamPosition:
        """Where a restarted stream must start: after the last batch consumed."""
        consumed = self._consumed
        if self._epoch_length.get(consumed.epoch) == consumed.batches:  # that epoch is over
            return StreamPosition(consumed.epoch + 1, 0)
        return consumed

    def fingerprint(self) -> list:
        """What the order of the stream depends on; a restart skips batches only if it matches."""
        cfg = self.cfg
        return [len(self.urls), cfg.batch_size, cfg.num_workers, cfg.seed, cfg.shuffle_buffer,
                cfg.shard_shuffle, cfg.resampled, cfg.epoch_size, self.world, cfg.max_episodes,
                cfg.episodes_seed]

    def state_dict(self) -> dict:
        position = self.position()
        return {"epoch": position.epoch, "batches": position.batches, "stream": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved `state_dict()` (the next `iter()` starts there); {} changes nothing."""
        if not state:
            return
        if state.get("stream") != self.fingerprint():
            log.warning("data: the training data or loader settings changed since the checkpoint; the "
                        "stream restarts at the beginning of epoch %s", state.get("epoch"))
            self._restart(StreamPosition(int(state.get("epoch", 0)), 0))
            return
        self._restart(StreamPosition(int(state["epoch"]), int(state["batches"])))

    def _float_batches(self) -> FloatBatches:
        if self._floats is not None:
            return self._floats
        cfg, start = self.cfg, self.start
        stream = TrainStream(self.urls, self.read, _batches(cfg, self.fmt, partial_last=False), seed=cfg.seed,
                             rank=self.rank, world=self.world, shard_shuffle=cfg.shard_shuffle,
                             shuffle_buffer=cfg.shuffle_buffer, batches_per_worker=self.batches_per_worker,
                             num_workers=cfg.num_workers, start=start)
        if start.batches or start.epoch:
            log.info("data: resuming the training stream at epoch %d after %d batches", start.epoch,
                     start.batches)
        augment = PairAugment(hflip=cfg.hflip and self.fmt.flips, jitter=cfg.color_jitter,
                              erasing=cfg.random_erasing, generator=torch.Generator())
        self._floats = FloatBatches(_dataloader(stream, cfg.num_workers, cfg.prefetch_factor, persistent=True),
                                    self.fmt.image_key, single_image=self.fmt.single_image, augment=augment,
                                    seed=cfg.seed, rank=self.rank)
        return self._floats


def train_loader(cfg: DataConfig, fmt: ShardFormat = FRAME_PAIRS, *, rank: int | None = None,
                 world: int | None = None, start: StreamPosition | None = None,
                 explicit_marks: bool = False) -> TrainLoader:
    """The training batches of `cfg.train_shards` in format `fmt` for this rank (`rank`/`world`
    default to `training.cluster.dist_env()`), starting at `start` (default: the beginning).

    Shard order, shuffle buffer and augmentation are seeded by (cfg.seed, epoch, rank, worker / batch),
    so a loader restarted at `position()` (or through `state_dict()`) gives exactly the batches this one
    gives next, augmentation included. See `TrainLoader` for `explicit_marks`.
    """
    rank, world = _rank_world(rank, world)
    return TrainLoader(cfg, fmt, list_shards(cfg.train_shards), rank=rank, world=world, start=start,
                       explicit_marks=explicit_marks)


# ---- validation, evaluation, inference: every sample once, in order --------------------------------------
class _InOrder(IterableDataset):
    """Batches of every sample of `urls` once, in order; with DataLoader workers, worker i reads
    shards i::workers and the DataLoader interleaves their batches (a fixed order for a given shard
    list and worker count)."""

    def __init__(self, urls: list[str], batches: Batches) -> None:
        super().__init__()
        self.urls, self.batches = urls, batches

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        urls = self.urls if info is None else self.urls[info.id::info.num_workers]
        return self.batches(read_shards(urls))


def eval_loader(cfg: DataConfig, fmt: ShardFormat = FRAME_PAIRS, *, shards: ShardSpec | None = None,
                rank: int | None = None, world: int | None = None) -> FloatBatches:
    """Validation/evaluation batches of `shards` (default `cfg.val_shards`) in format `fmt`: no shuffling,
    no augmentation, this rank's shards (`rank::world`, defaults from `dist_env()`) split between the
    DataLoader workers; every sample once, the last batch possibly smaller."""
    shards = cfg.val_shards if shards is None else shards
    if not shards:
        raise ValueError("eval_loader: no shards (data.val_shards is null)")
    rank, world = _rank_world(rank, world)
    urls = list_shards(shards)[rank::world]
    workers = min(cfg.num_workers, len(urls))
    dataset = _InOrder(urls, _batches(cfg, fmt, partial_last=True))
    return FloatBatches(_dataloader(dataset, workers, cfg.prefetch_factor, persistent=True), fmt.image_key,
                        single_image=fmt.single_image)


def frame_pair_loader(shards: ShardSpec, batch_size: int, num_workers: int = 0,
                      image_size: int | None = None) -> FloatBatches:
    """Frame-pair batches in a fixed order, no augmentation, every sample once (`lapa label`,
    `lapa eval-laq`): `frame_pairs.collate_inference` with frames float32 [B, 3, 2, H, W] in [0, 1].

    Not split by rank (the caller picks the shards of each rank). With workers, each worker reads
    whole shards and the DataLoader interleaves their batches: the order is fixed for a given shard list
    and worker count. `image_size=None` keeps the shards' size.
    """
    urls = list_shards(shards)
    batches = Batches(frame_pairs.IMAGE_PARTS, batch_size=batch_size, size=image_size, partial_last=True,
                      fields=frame_pairs.inference_fields, collate=frame_pairs.collate_inference, in_flight=4)
    workers = min(num_workers, len(urls))
    return FloatBatches(_dataloader(_InOrder(urls, batches), workers, prefetch_factor=2, persistent=False),
                        "frames")
