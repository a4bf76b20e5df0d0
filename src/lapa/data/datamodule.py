"""Streaming data modules over WebDataset shards (spec 2.1.2 `LAPADataModule`).

Training pipeline per DataLoader worker (spec order; `stream.TrainStream`, seeded per epoch, rank and
worker so that a resumed run continues exactly where the checkpoint was taken):
  shard list -> [shard shuffle, split by rank, split by worker]  or  resampled shards (DDP)
  -> tar samples (`shards.tar_samples`) -> sample shuffle buffer -> decode (simplejpeg) into a planar
  uint8 batch [B, 3, T, H, W]   ... then in the trainer process (`FloatBatches`): flip, colour jitter,
  erasing and uint8 -> float32 in [0, 1], fused per sample (`transforms.to_float`)
Validation and inference read shards in order (WebDataset's node/worker split, no shuffling).

Tasks and batches:
- "laq":        {"frames": float32 [B, 3, 2, H, W] in [0, 1]}          (frame-pair shards)
- "foundation": {"image": [B, 3, H, W], "text": list[str], "latent_tokens": int64 [B, L]} (latent shards)
- "finetune":   {"image": [B, 3, H, W], "text": list[str], "actions": float32 [B, 7]}  (robot steps)

Under DDP every rank must run the same number of batches (a rank that stops early hangs the others in
all-reduce), so training there uses resampled shards and a fixed epoch length per worker
(`resampled=True`): each rank/worker samples shards with its own seeded RNG and stops after exactly
the same count. On one process the exact split (every sample once per epoch) is used.
Corrupt samples (bad JPEG, missing part, NaN action) and unreadable tars are skipped with a warning and
counted (`skipped_samples()`, per process), never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from lapa.config import require
from lapa.data.images import decode_jpeg, decode_jpeg_into, encoded_image_size
from lapa.data.shards import decode_npy, list_shards, tar_samples
from lapa.data.stream import StreamPosition, TrainStream, mix_seed
from lapa.data.transforms import PairAugment, ensure_size, to_float

log = logging.getLogger(__name__)

TASKS = ("laq", "foundation", "finetune")
PAIR_PARTS = ("t.jpg", "t1.jpg")  # the two frames of a frame-pair sample
_SKIPPED: Counter = Counter()


@dataclass
class DataConfig:
    """Shards and loader settings (conf/data/*.yaml). `batch_size` is per device."""

    train_shards: str = "data/frames/train"  # folder, glob, brace pattern or file
    val_shards: str | None = "data/frames/val"  # null: no validation data
    batch_size: int = 32
    num_workers: int = 2
    image_size: int = 256  # shards of another size are resized (shorter side, centre crop)
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    resampled: bool | None = None  # null: true under DDP (equal batch counts per rank), else false
    epoch_size: int | None = None  # samples per epoch over all ranks when resampled; null: count shards
    hflip: bool = True  # LAQ only; never for foundation/finetune (flips change the action's meaning)
    color_jitter: float = 0.1  # brightness/contrast/saturation strength; 0 = off
    random_erasing: float = 0.0  # probability per sample
    prefetch_factor: int = 4  # batches prefetched per worker
    seed: int = 0

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


# ---- corrupt-sample accounting ----------------------------------------------------------------------
def skipped_samples() -> dict[str, int]:
    """Samples skipped in this process so far, by reason."""
    return dict(_SKIPPED)


def _skip(reason: str, detail: str) -> None:
    _SKIPPED[reason] += 1
    n = sum(_SKIPPED.values())
    if n <= 20 or n % 1000 == 0:  # every early one, then a heartbeat: a bad shard cannot flood logs
        log.warning("skipped a sample (%s): %s [%d skipped so far in pid %d]", reason, detail, n,
                    os.getpid())


def _tar_error(exn: Exception) -> None:
    """Unreadable/truncated tars: count, warn, continue with the next shard."""
    _skip("unreadable shard data", f"{type(exn).__name__}: {exn}")


_read_tars = partial(tar_samples, on_error=_tar_error)  # pipeline stage: shard urls -> raw samples


def _read_urls(urls: Iterable[str]) -> Iterator[dict]:
    """Raw samples of shard urls (the reader of `TrainStream`)."""
    return _read_tars({"url": url} for url in urls)


# ---- decoding into batches (in DataLoader workers) ------------------------------------------------------
def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


class _SizeMismatch(ValueError):
    """An image of another size than its batch while images are not resized (`image_size=None`)."""


def _decode_into(data: bytes, out: np.ndarray, scratch: np.ndarray, resize: bool) -> None:
    """One image into its planar batch slot `out` (uint8 `[3, H, W]`), through `scratch` (`[H, W, 3]`):
    decoded into the scratch when it has the slot's size, else decoded and, when `resize`, resized
    (shorter side) and centre-cropped to it."""
    rgb = scratch
    if not decode_jpeg_into(data, scratch):
        rgb = decode_jpeg(data)
        if resize:
            rgb = ensure_size(rgb, out.shape[1])
        if rgb.shape != scratch.shape:
            raise _SizeMismatch(f"{rgb.shape[:2]} in a batch of {out.shape[1:]}; set data.image_size")
    # The layout change (channels last -> planar) reads the just-decoded image from cache: 4 ms per
    # 32 pairs here, against 10 ms for the same change fused into the float conversion in the trainer.
    np.copyto(out, rgb.transpose(2, 0, 1))


RELEASE = "__release__"  # batch key of a worker's buffer flag; `FloatBatches` sets it and drops the key


class _SharedBuffers:
    """Shared-memory uint8 batch buffers of one DataLoader worker, reused once the trainer releases them.

    A batch made in a worker must live in shared memory to reach the trainer without a copy. A fresh
    12 MB shared buffer (32 pairs of 256 px) costs page faults and zeroing: measured 17 ms of kernel
    time per batch in each worker, 3 ms with reuse. Each buffer ends with a flag byte, shipped with the
    batch under `RELEASE`: the worker clears it when it fills the buffer, `FloatBatches` sets it once
    it has converted the batch to float, and only a set buffer is filled again. Batches of
    a consumer that never releases (the bare DataLoader) just get fresh buffers.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # kept buffers: those in flight (prefetched + being converted + being filled)
        self.buffers: list[torch.Tensor] = []  # uint8 [N + 1]: a batch of N bytes, then its flag

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images uint8 `shape`, flag uint8 [1]), both views of one shared buffer."""
        n = math.prod(shape)
        buffer = next((b for b in self.buffers if b.numel() == n + 1 and b[n] == 1), None)
        if buffer is None:
            buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n + 1))
            self.buffers.append(buffer)
            if len(self.buffers) > self.limit:  # forget the oldest (never released, e.g. a batch the
                self.buffers.pop(0)  # trainer dropped unread): safe, as it is never written again
        buffer[n] = 0
        return buffer[:n].view(shape), buffer[n:]


def _step_fields(sample: dict, target: str) -> dict | None:
    """Text and target of a latent-labelled (`target="latent.npy"`) or robot-step (`"action.npy"`)
    sample; None (counted) when corrupt."""
    try:
        text = sample["txt"].decode("utf-8") if "txt" in sample else ""
        value = decode_npy(sample[target])
    except KeyError as err:
        return _skip("missing part", f"{_where(sample)} has no {err}")
    except Exception as err:
        return _skip("bad sample", f"{_where(sample)}: {type(err).__name__}: {err}")
    if target == "action.npy" and (value.shape != (7,) or not np.isfinite(value).all()):
        return _skip("bad action", f"{_where(sample)}: {value!r}")
    return {"text": text, "value": value}


class _Batches:
    """Pipeline stage: tar samples -> batches with the images as planar uint8 `[B, 3, T, H, W]`.

    Each sample's JPEGs (`parts`, T of them) decode into one reused scratch image and go from there
    into their slot of the batch, which lives in (reused) shared memory inside a worker: no per-image
    arrays, and uint8 is 4x less to hand over than float. `FloatBatches` converts to float (and
    augments) in the trainer process.
    A corrupt sample is counted and its slot reused, so batches stay full. `fields(sample)` returns
    what the batch keeps of a sample besides its images (None: skip it); `collate(images, rows)` builds
    the batch. `size=None` keeps the shards' size (taken from the first image of each batch).
    Picklable for spawned workers.
    """

    def __init__(self, parts: tuple[str, ...], batch_size: int, size: int | None, partial_last: bool,
                 fields: Callable[[dict], dict | None], collate: Callable[[torch.Tensor, list], dict],
                 in_flight: int) -> None:
        self.parts, self.batch_size, self.size = parts, batch_size, size
        self.partial_last = partial_last  # yield a last, smaller batch (validation, inference)
        self.fields, self.collate = fields, collate
        self.in_flight = in_flight  # batches per worker in flight at once: the buffers worth keeping
        self._buffers: _SharedBuffers | None = None  # made in the worker that uses it
        self._scratch = np.empty((0, 0, 3), dtype=np.uint8)  # one decoded image [H, W, 3]

    def __call__(self, samples: Iterable[dict], skip: int = 0) -> Iterator[dict]:
        """Batches of `samples`, after passing over the first `skip` batches' samples undecoded (a
        resumed run: those were trained on; a sample with a corrupt JPEG counts there, not here)."""
        images, rows = None, []  # the batch being filled: uint8 [B, 3, T, H, W], and its samples' fields
        to_skip = skip * self.batch_size  # samples
        for sample in samples:
            if to_skip and all(part in sample for part in self.parts):
                to_skip -= 1
                continue
            row = self.fields(sample)
            if row is None:
                continue
            if images is None:
                shape = self._shape(sample)
                if shape is None:
                    continue
                images, flag = self._allocate(shape)
            if self._decode(sample, images[len(rows)].numpy()):  # slot [3, T, H, W]
                rows.append(row)
            if len(rows) == self.batch_size:
                yield self._finish(images, rows, flag)
                images, rows = None, []
        if rows and self.partial_last:
            yield self._finish(images[:len(rows)], rows, flag)

    def _allocate(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, release flag or None): in a worker, a reused shared buffer."""
        if torch.utils.data.get_worker_info() is None:
            return torch.empty(shape, dtype=torch.uint8), None
        if self._buffers is None:
            self._buffers = _SharedBuffers(self.in_flight)
        return self._buffers.take(shape)

    def _finish(self, images: torch.Tensor, rows: list, flag: torch.Tensor | None) -> dict:
        batch = self.collate(images, rows)
        if flag is not None:
            batch[RELEASE] = flag
        return batch

    def _shape(self, sample: dict) -> tuple[int, ...] | None:
        """[B, 3, T, H, W] of the batch that `sample` starts; None (counted) when it cannot tell."""
        if self.size is not None:
            h = w = self.size
        else:
            try:
                h, w = encoded_image_size(sample[self.parts[0]])
            except KeyError as err:
                return _skip("missing part", f"{_where(sample)} has no {err}")
            except Exception as err:
                return _skip("bad jpeg", f"{_where(sample)}: {err}")
        return self.batch_size, 3, len(self.parts), h, w

    def _decode(self, sample: dict, slot: np.ndarray) -> bool:
        """Decode the sample's T images into `slot` (uint8 `[3, T, H, W]`); False (counted) if corrupt."""
        if self._scratch.shape[:2] != slot.shape[2:]:
            self._scratch = np.empty(slot.shape[2:] + (3,), dtype=np.uint8)
        try:
            for j, part in enumerate(self.parts):
                _decode_into(sample[part], slot[:, j], self._scratch, resize=self.size is not None)
            return True
        except KeyError as err:
            _skip("missing part", f"{_where(sample)} has no {err}")
        except _SizeMismatch as err:
            _skip("frame size mismatch", f"{_where(sample)}: {err}")
        except Exception as err:  # simplejpeg/PIL raise several types for corrupt data
            _skip("bad jpeg", f"{_where(sample)}: {err}")
        return False


def _keep_sample(sample: dict) -> dict:
    return sample


def _collate_frames(images: torch.Tensor, rows: list[dict]) -> dict:
    return {"frames": images}


def _collate_steps(images: torch.Tensor, rows: list[dict], key: str, dtype: torch.dtype) -> dict:
    values = torch.as_tensor(np.stack([row["value"] for row in rows])).to(dtype)
    return {"image": images, "text": [row["text"] for row in rows], key: values}


_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """Let glibc keep large freed blocks for reuse (once per process; a no-op off glibc).

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


def _init_worker(worker_id: int) -> None:
    """DataLoader worker start: the same malloc tuning as the trainer process, so the per-sample decode
    outputs and jitter scratch reuse memory under `spawn` as well (torch's worker loop already limits
    each worker to one thread)."""
    _reuse_freed_memory()


class FloatBatches:
    """Iterable over a DataLoader that turns each batch's planar uint8 images into float32 in [0, 1],
    augmented by `augment` when given (`to_float`).

    Runs in the consuming (trainer) process: workers ship uint8, which moves through shared memory
    three times faster than float (measured: 40 vs 131 ms per 32-pair batch), and the conversion
    with flip and jitter is one cache-friendly pass per sample into recycled memory.
    `frames` [B, 3, 2, H, W]; `image` [B, 3, 1, H, W] -> [B, 3, H, W].
    """

    def __init__(self, loader: DataLoader, augment: PairAugment | None = None, *, seed: int = 0,
                 rank: int = 0, start: StreamPosition | None = None) -> None:
        self.loader, self.augment = loader, augment
        # Training: the augmentation of batch i of epoch e is drawn from a generator seeded by
        # (seed, e, rank, i), so a resumed run augments every batch as the uninterrupted run did.
        self.seed, self.rank, self.start = seed, rank, start or StreamPosition()
        self._track = start is not None  # the training loader: follow the trainer's position
        self._epochs_started = 0
        # Where the trainer stands: (epoch, index) of batches handed out but not yet trained on (the
        # trainer prefetches), the position after the last trained batch, and the length of each epoch
        # whose iterator ran out.
        self._pending: deque[tuple[int, int]] = deque()
        self._trained = self.start
        self._epoch_length: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        _reuse_freed_memory()
        epoch = self.start.epoch + self._epochs_started
        first = self.start.batches if self._epochs_started == 0 else 0
        self._epochs_started += 1
        generator = self.augment.generator if self.augment is not None else None
        self._pending.clear()  # batches of an abandoned iterator are never trained on
        yielded = first
        for index, batch in enumerate(self.loader, start=first):
            yielded = index + 1
            if self._track:
                self._pending.append((epoch, index))
            if generator is not None:
                generator.manual_seed(mix_seed(self.seed, epoch, self.rank, index))
            release = batch.pop(RELEASE, None)
            for key in ("frames", "image"):
                if key in batch:
                    batch[key] = to_float(batch[key], self.augment)
            if "image" in batch:
                batch["image"] = batch["image"][:, :, 0]  # [B, 3, 1, H, W] -> [B, 3, H, W]
            if release is not None:
                release.fill_(1)  # the worker may now refill this buffer
            yield batch
        self._epoch_length[epoch] = yielded

    def mark_trained(self) -> None:
        """The trainer took the oldest handed-out batch for a training step (`on_before_batch_transfer`)."""
        if self._pending:
            epoch, index = self._pending.popleft()
            self._trained = StreamPosition(epoch, index + 1)

    def position(self) -> StreamPosition:
        """Where a resumed run's stream must start: after the last batch trained on."""
        trained = self._trained
        if self._epoch_length.get(trained.epoch) == trained.batches:  # that epoch is over
            return StreamPosition(trained.epoch + 1, 0)
        return trained


# ---- the data module ------------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed, else the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def count_samples(urls: list[str]) -> int:
    """Samples in local tar shards, counted from the tar headers (`.json` members), without reading data."""
    total = 0
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            raise ValueError(f"cannot count samples in remote shard {url}; set data.epoch_size")
        with tarfile.open(url) as tar:
            total += sum(1 for m in tar if m.name.endswith(".json"))
    return total


class LAPADataModule(L.LightningDataModule):
    """Train/val loaders of one task ("laq", "foundation", "finetune") over WebDataset shards."""

    def __init__(self, cfg: DataConfig, task: str = "laq") -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task={task!r}: must be one of {TASKS}")
        self.cfg, self.task = cfg, task
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None
        self._resume_at: StreamPosition | None = None  # from a checkpoint (`load_state_dict`)
        self._train_loader: FloatBatches | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_urls is None and stage in (None, "fit"):
            self.train_urls = list_shards(self.cfg.train_shards)
        if self.val_urls is None and self.cfg.val_shards and stage in (None, "fit", "validate"):
            self.val_urls = list_shards(self.cfg.val_shards)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return _dist_info()

    def _in_flight(self) -> int:
        """Batches of one worker in flight at once: prefetched, being converted, being filled."""
        return self.cfg.prefetch_factor + 2

    def _batches(self, partial_last: bool) -> _Batches:
        """Decode + batching stage of the task (picklable into spawned workers)."""
        cfg = self.cfg
        if self.task == "laq":
            return _Batches(PAIR_PARTS, cfg.batch_size, cfg.image_size, partial_last, _keep_sample,
                            _collate_frames, self._in_flight())
        target, key, dtype = (("latent.npy", "latent_tokens", torch.int64) if self.task == "foundation"
                              else ("action.npy", "actions", torch.float32))
        return _Batches(("jpg",), cfg.batch_size, cfg.image_size, partial_last,
                        partial(_step_fields, target=target), partial(_collate_steps, key=key, dtype=dtype),
                        self._in_flight())

    def batches_per_rank(self, world_size: int) -> int:
        """Batches every rank runs per resampled epoch (the same number on all ranks)."""
        assert self.train_urls is not None, "call setup() first"
        samples = self.cfg.epoch_size or count_samples(self.train_urls)
        return max(1, samples // (world_size * self.cfg.batch_size))

    def train_dataloader(self) -> FloatBatches:
        """The training batches of this rank (`stream.TrainStream`): shard order, shuffle buffer and
        augmentation are seeded by (data.seed, epoch, rank, worker / batch), so a run resumed from a
        checkpoint continues with the batches the uninterrupted run would have seen next."""
        self.setup("fit")
        cfg = self.cfg
        rank, world = self._world()
        resampled = world > 1 if cfg.resampled is None else cfg.resampled
        # Flips only for LAQ pairs: for latent and robot-action targets a mirror changes the label.
        augment = PairAugment(hflip=cfg.hflip and self.task == "laq", jitter=cfg.color_jitter,
                              erasing=cfg.random_erasing, generator=torch.Generator())
        per_worker = None
        if resampled:  # every rank and worker runs the same number of batches per epoch
            per_worker = math.ceil(self.batches_per_rank(world) / max(1, cfg.num_workers))
        start = self._resume_at or StreamPosition()
        self._resume_at = None  # once: a later call (reloaded loaders) starts afresh
        dataset = TrainStream(self.train_urls, _read_urls, self._batches(partial_last=False), seed=cfg.seed,
                              rank=rank, world=world, shard_shuffle=cfg.shard_shuffle,
                              shuffle_buffer=cfg.shuffle_buffer, batches_per_worker=per_worker,
                              num_workers=cfg.num_workers, start=start)
        if start.batches or start.epoch:
            log.info("data: resuming the training stream at epoch %d after %d batches", start.epoch,
                     start.batches)
        self._train_loader = self._loader(dataset, cfg.num_workers, augment, start=start)
        return self._train_loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self._train_loader is not None:
            self._train_loader.mark_trained()  # this batch enters a training step
        return batch

    # Lightning saves this in every checkpoint and hands it back on resume (before train_dataloader).
    # The position is the data stream's own (its epochs need not match Lightning's: a run stopped by
    # max_steps ends Lightning's epoch but not the stream's).
    def state_dict(self) -> dict:
        if self._train_loader is None:
            return {}
        position = self._train_loader.position()
        return {"epoch": position.epoch, "batches": position.batches, "stream": self._stream_fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.setup("fit")
        if state.get("stream") != self._stream_fingerprint():
            log.warning("data: the training data or loader settings changed since the checkpoint; the "
                        "stream restarts at the beginning of epoch %s", state.get("epoch"))
            self._resume_at = StreamPosition(int(state.get("epoch", 0)), 0)
            return
        self._resume_at = StreamPosition(int(state["epoch"]), int(state["batches"]))

    def _stream_fingerprint(self) -> list:
        """What the order of the training stream depends on; a resume skips batches only if it matches."""
        cfg = self.cfg
        return [len(self.train_urls or []), cfg.batch_size, cfg.num_workers, cfg.seed, cfg.shuffle_buffer,
                cfg.shard_shuffle, cfg.resampled, cfg.epoch_size, self._world()[1]]

    def val_dataloader(self) -> FloatBatches | list:
        self.setup("validate")
        if not self.val_urls:
            return []
        dataset = wds.DataPipeline(wds.SimpleShardList(self.val_urls), wds.split_by_node,
                                   wds.split_by_worker, _read_tars, self._batches(partial_last=True))
        return self._loader(dataset, min(self.cfg.num_workers, len(self.val_urls)))

    def _loader(self, dataset, num_workers: int, augment: PairAugment | None = None,
                start: StreamPosition | None = None) -> FloatBatches:
        loader = DataLoader(
            dataset, batch_size=None, num_workers=num_workers,
            persistent_workers=num_workers > 0,  # keeps resampling epochs distinct
            worker_init_fn=_init_worker if num_workers > 0 else None,
            prefetch_factor=self.cfg.prefetch_factor if num_workers > 0 else None)
        return FloatBatches(loader, augment, seed=self.cfg.seed, rank=self._world()[0], start=start)


# ---- deterministic inference loader (lapa label, lapa eval-laq) -------------------------------------
def _collate_inference(images: torch.Tensor, raws: list[dict]) -> dict:
    metas, actions = [], []
    for raw in raws:
        metas.append(json.loads(raw["json"]) if "json" in raw else {})
        actions.append(decode_npy(raw["action.npy"]) if "action.npy" in raw else None)
    has_action = all(a is not None for a in actions)
    return {
        "frames": images,
        "key": [raw["__key__"] for raw in raws],
        "meta": metas,
        "instruction": [raw["txt"].decode("utf-8") if "txt" in raw else "" for raw in raws],
        "action": torch.as_tensor(np.stack(actions), dtype=torch.float32) if has_action else None,
        "t_jpeg": [raw["t.jpg"] for raw in raws],
    }


def frame_pair_loader(shards, batch_size: int, num_workers: int = 0,
                      image_size: int | None = None) -> FloatBatches:
    """Frame-pair batches in a fixed order, no augmentation, every sample once (inference).

    Batches: {"frames": float32 [B, 3, 2, H, W] in [0, 1], "key": list[str], "meta": list[dict],
    "instruction": list[str] ("" when absent), "action": float32 [B, 7] or None (when any sample lacks
    one), "t_jpeg": list[bytes] (frame t's JPEG, to copy into labelled shards unchanged)}.
    With workers, each worker reads whole shards and the DataLoader interleaves their batches: the order
    is fixed for a given shard list and worker count. `image_size=None` keeps the shards' size.
    """
    urls = list_shards(shards)
    dataset = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.split_by_worker, _read_tars,
        _Batches(PAIR_PARTS, batch_size, image_size, True, _keep_sample, _collate_inference, in_flight=4))
    workers = min(num_workers, len(urls))
    return FloatBatches(DataLoader(dataset, batch_size=None, num_workers=workers,
                                   prefetch_factor=2 if workers > 0 else None,
                                   worker_init_fn=_init_worker if workers > 0 else None))
