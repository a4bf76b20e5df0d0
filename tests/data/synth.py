"""Tiny synthetic shards and loader settings for data tests: sample n's frames carry n in their pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lapa.data.images import encode_jpeg
from lapa.data.loader import DataConfig
from lapa.data.shards import shard_name, write_shard

STEP = 6


def coded_image(n: int, size: int, shift: int = 0) -> np.ndarray:
    """Flat red = 8 + STEP * n (readable after JPEG), plus a left-right asymmetric blue ramp."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = 8 + STEP * n
    img[..., 1] = 100 + shift
    img[..., 2] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    return img


def sample_id(frames_t) -> int:
    """n from a decoded frame tensor [3, H, W] in [0, 1] (no colour jitter)."""
    return int(round((float(frames_t[0].mean()) * 255 - 8) / STEP))


def data_cfg(train, **kw) -> DataConfig:
    """Small, fast loader settings over `train` (no augmentation unless asked)."""
    base = dict(train_shards=str(train), val_shards=None, batch_size=4, num_workers=0, image_size=16,
                shuffle_buffer=8, color_jitter=0.0, hflip=False, prefetch_factor=2)
    base.update(kw)
    return DataConfig(**base)


def ids_of(batches, key: str = "frames") -> list[int]:
    """Sample ids of the batches' frames t (pairs) or images, in order."""
    return [sample_id(f[:, 0] if key == "frames" else f) for b in batches for f in b[key]]


def make_pair_shards(directory: Path, shards: int, per_shard: int, size: int = 16,
                     action: bool = False) -> list[Path]:
    """Frame-pair shards; sample ids 0 .. shards*per_shard-1, t1 differs from t only in green."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            n = s * per_shard + i
            sample = {"__key__": f"{n:06d}", "t.jpg": encode_jpeg(coded_image(n, size)),
                      "t1.jpg": encode_jpeg(coded_image(n, size, shift=40)),
                      "json": {"video_id": f"v{n % 3}", "frame_idx": n}, "txt": f"task {n}"}
            if action:
                sample["action.npy"] = np.full(7, n, dtype=np.float32)
            samples.append(sample)
        path = directory / shard_name("pairs", s)
        write_shard(path, samples)
        paths.append(path)
    return paths


def make_step_shards(directory: Path, shards: int, per_shard: int, kind: str, size: int = 16) -> None:
    """Latent-labelled (`kind="latent"`) or robot-step (`kind="robot"`) shards."""
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            n = s * per_shard + i
            sample = {"__key__": f"{n:06d}", "jpg": encode_jpeg(coded_image(n, size)), "txt": f"do {n}"}
            if kind == "latent":
                sample["latent.npy"] = np.array([n % 8, 1, 2, 3], dtype=np.int64)
                sample["json"] = {"n": n}
            else:
                sample["action.npy"] = np.arange(7, dtype=np.float32) + n
                sample["json"] = {"episode_id": f"ep{n // 3}", "step": n % 3, "task": "push"}
            samples.append(sample)
        write_shard(directory / shard_name(kind, s), samples)
