"""Streaming data modules over WebDataset shards (spec 2.1.2 `LAPADataModule`).

Pipeline per DataLoader worker (spec order):
  shard list -> [shard shuffle, split_by_node, split_by_worker]  or  resampled shards (DDP)
  -> tar samples -> sample shuffle buffer -> decode (simplejpeg) -> batch into planar uint8 (+ flip,
  colour jitter, erasing)   ... then in the trainer process (`FloatBatches`): uint8 -> float32 in [0, 1]

Tasks and batches:
- "laq":        {"frames": float32 [B, 3, 2, H, W] in [0, 1]}          (frame-pair shards)
- "foundation": {"image": [B, 3, H, W], "text": list[str], "latent_tokens": int64 [B, L]} (latent shards)
- "finetune":   {"image": [B, 3, H, W], "text": list[str], "actions": float32 [B, 7]}  (robot steps)

Under DDP every rank must run the same number of batches (a rank that stops early hangs the others in
all-reduce), so training there uses resampled shards and a fixed epoch length per worker
(`resampled=True` + `with_epoch`): each rank/worker samples shards with its own seeded RNG and stops
after exactly the same count. On one process the exact split (every sample once per epoch) is used.
Corrupt samples (bad JPEG, missing part, NaN action) and unreadable tars are skipped with a warning and
counted (`skipped_samples()`, per process), never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from lapa.config import require
from lapa.data.images import decode_jpeg
from lapa.data.shards import decode_npy, list_shards
from lapa.data.transforms import PairAugment, ensure_size, stack_planar, to_float

log = logging.getLogger(__name__)

TASKS = ("laq", "foundation", "finetune")
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


def _tar_error(exn: Exception) -> bool:
    """wds handler for unreadable/truncated tars: count, warn, continue with the next shard."""
    _skip("unreadable shard data", f"{type(exn).__name__}: {exn}")
    return True


# ---- per-sample decoding (returns None to drop a corrupt sample) ------------------------------------
def _where(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def _decode_pair(sample: dict, size: int | None) -> dict | None:
    try:
        t, t1 = (ensure_size(decode_jpeg(sample[k]), size) for k in ("t.jpg", "t1.jpg"))
    except KeyError as err:
        return _skip("missing part", f"{_where(sample)} has no {err}")
    except Exception as err:  # simplejpeg/PIL raise several types for corrupt data
        return _skip("bad jpeg", f"{_where(sample)}: {err}")
    if t.shape != t1.shape:
        return _skip("frame size mismatch", f"{_where(sample)}: {t.shape} vs {t1.shape}")
    return {"__key__": sample["__key__"], "pair": (t, t1), "raw": sample}


def _decode_step(sample: dict, size: int | None, target: str) -> dict | None:
    """latent-labelled (`target="latent.npy"`) or robot-step (`"action.npy"`) sample."""
    try:
        image = ensure_size(decode_jpeg(sample["jpg"]), size)
        text = sample["txt"].decode("utf-8") if "txt" in sample else ""
        value = decode_npy(sample[target])
    except KeyError as err:
        return _skip("missing part", f"{_where(sample)} has no {err}")
    except Exception as err:
        return _skip("bad sample", f"{_where(sample)}: {type(err).__name__}: {err}")
    if target == "action.npy" and (value.shape != (7,) or not np.isfinite(value).all()):
        return _skip("bad action", f"{_where(sample)}: {value!r}")
    return {"__key__": sample["__key__"], "image": image, "text": text, "value": value}


# ---- collation (in workers: planar uint8) -------------------------------------------------------------
class _Collate:
    """Batch collation of one task: images to planar uint8 [B, 3, T, H, W] (flipped while copying when
    `augment` says so, then erased), everything else to tensors/lists. Picklable for spawned workers."""

    def __init__(self, task: str, augment: PairAugment | None = None) -> None:
        self.task, self.augment = task, augment

    def __call__(self, samples: list[dict]) -> dict:
        flips = self.augment.flips(len(samples)) if self.augment is not None else None
        if self.task == "laq":
            images = stack_planar([s["pair"] for s in samples], flips)
            batch = {"frames": images}
        else:
            images = stack_planar([(s["image"],) for s in samples], flips)
            key, dtype = ("latent_tokens", torch.int64) if self.task == "foundation" else ("actions",
                                                                                         torch.float32)
            batch = {"image": images, "text": [s["text"] for s in samples],
                     key: torch.as_tensor(np.stack([s["value"] for s in samples])).to(dtype)}
        if self.augment is not None:
            batch["frames" if self.task == "laq" else "image"] = self.augment(images)
        return batch


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
    """Iterable over a DataLoader that turns each batch's planar uint8 images into float32 in [0, 1].

    Runs in the consuming (trainer) process: workers ship uint8, which moves through shared memory
    three times faster than float (measured: 40 vs 131 ms per 32-pair batch), and the conversion
    into recycled memory is a single cheap pass.
    `frames` [B, 3, 2, H, W]; `image` [B, 3, 1, H, W] -> [B, 3, H, W].
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        _reuse_freed_memory()
        for batch in self.loader:
            if "frames" in batch:
                batch["frames"] = to_float(batch["frames"])
            if "image" in batch:
                batch["image"] = to_float(batch["image"])[:, :, 0]
            yield batch


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

    def _decoder(self) -> Callable:
        """Per-sample decode of the task; a partial, so it pickles into spawned workers."""
        size = self.cfg.image_size
        if self.task == "laq":
            return partial(_decode_pair, size=size)
        target = "latent.npy" if self.task == "foundation" else "action.npy"
        return partial(_decode_step, size=size, target=target)

    def batches_per_rank(self, world_size: int) -> int:
        """Batches every rank runs per resampled epoch (the same number on all ranks)."""
        assert self.train_urls is not None, "call setup() first"
        samples = self.cfg.epoch_size or count_samples(self.train_urls)
        return max(1, samples // (world_size * self.cfg.batch_size))

    def train_dataloader(self) -> FloatBatches:
        self.setup("fit")
        cfg = self.cfg
        rank, world = self._world()
        resampled = world > 1 if cfg.resampled is None else cfg.resampled
        # Flips only for LAQ pairs: for latent and robot-action targets a mirror changes the label.
        augment = PairAugment(hflip=cfg.hflip and self.task == "laq", jitter=cfg.color_jitter,
                              erasing=cfg.random_erasing)
        if resampled:  # seeded per rank and worker by webdataset: ranks see different shard streams
            source = [wds.ResampledShards(self.train_urls, seed=cfg.seed, deterministic=True)]
        else:
            source = [wds.SimpleShardList(self.train_urls)]
            if cfg.shard_shuffle:  # same seed on every rank, so split_by_node stays a partition
                source.append(wds.detshuffle(bufsize=len(self.train_urls), seed=cfg.seed))
            source += [wds.split_by_node, wds.split_by_worker]
        stages = source + [wds.tarfile_to_samples(handler=_tar_error)]
        if cfg.shuffle_buffer > 0:
            stages.append(wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100)))
        stages += [wds.map(self._decoder()),
                   wds.batched(cfg.batch_size, collation_fn=_Collate(self.task, augment), partial=False)]
        dataset = wds.DataPipeline(*stages)
        if resampled:
            per_rank = self.batches_per_rank(world)
            per_worker = math.ceil(per_rank / max(1, cfg.num_workers))
            # with_epoch counts per worker; every rank has the same workers, so the same total.
            dataset = dataset.with_epoch(per_worker).with_length(per_worker * max(1, cfg.num_workers),
                                                                 silent=True)
        return self._loader(dataset, cfg.num_workers)

    def val_dataloader(self) -> FloatBatches | list:
        self.setup("validate")
        if not self.val_urls:
            return []
        dataset = wds.DataPipeline(
            wds.SimpleShardList(self.val_urls), wds.split_by_node, wds.split_by_worker,
            wds.tarfile_to_samples(handler=_tar_error), wds.map(self._decoder()),
            wds.batched(self.cfg.batch_size, collation_fn=_Collate(self.task), partial=True))
        return self._loader(dataset, min(self.cfg.num_workers, len(self.val_urls)))

    def _loader(self, dataset, num_workers: int) -> FloatBatches:
        return FloatBatches(DataLoader(
            dataset, batch_size=None, num_workers=num_workers,
            persistent_workers=num_workers > 0,  # keeps resampling epochs distinct
            worker_init_fn=_init_worker if num_workers > 0 else None,
            prefetch_factor=self.cfg.prefetch_factor if num_workers > 0 else None))


# ---- deterministic inference loader (lapa label, lapa eval-laq) -------------------------------------
def _collate_inference(samples: list[dict]) -> dict:
    raws = [s["raw"] for s in samples]
    metas, actions = [], []
    for raw in raws:
        metas.append(json.loads(raw["json"]) if "json" in raw else {})
        actions.append(decode_npy(raw["action.npy"]) if "action.npy" in raw else None)
    has_action = all(a is not None for a in actions)
    return {
        "frames": stack_planar([s["pair"] for s in samples]),
        "key": [s["__key__"] for s in samples],
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
        wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(handler=_tar_error),
        wds.map(partial(_decode_pair, size=image_size)),
        wds.batched(batch_size, collation_fn=_collate_inference, partial=True))
    workers = min(num_workers, len(urls))
    return FloatBatches(DataLoader(dataset, batch_size=None, num_workers=workers,
                                   prefetch_factor=2 if workers > 0 else None,
                                   worker_init_fn=_init_worker if workers > 0 else None))
