"""Tiny frame-pair shards for the labelling and evaluation tests (imported by name: pytest puts tests/ on
sys.path because tests/conftest.py lives there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lapa.data.images import encode_jpeg
from lapa.data.shards import shard_name, write_shard

IMAGE_SIZE = 32


def make_pair_shards(directory: Path, num_shards: int, pairs_per_shard: int, seed: int = 0,
                     with_action: bool = True) -> list[Path]:
    """Frame-pair shards in the contract's format: a moving bright square, the action is its motion."""
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(num_shards):
        samples = []
        for i in range(pairs_per_shard):
            dx, dy = rng.integers(-4, 5, size=2)
            x, y = rng.integers(8, IMAGE_SIZE - 16, size=2)
            frames = []
            for cx, cy in ((x, y), (x + dx, y + dy)):
                img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40, dtype=np.uint8)
                img[cy:cy + 8, cx:cx + 8] = (230, 60, 60)
                frames.append(img)
            key = f"vid{s:02d}_{i:05d}"
            sample = {"__key__": key, "t.jpg": encode_jpeg(frames[0]), "t1.jpg": encode_jpeg(frames[1]),
                      "txt": f"move the square {i}",
                      "json": {"video_id": f"vid{s:02d}", "frame_idx": i, "frame_idx_t1": i + 1, "offset": 1,
                               "fps": 10, "source": "test", "src_frame_t": i, "src_frame_t1": i + 1}}
            if with_action:
                sample["action.npy"] = np.array([dx, dy, 0, 0, 0, 0, 1], dtype=np.float32)
            samples.append(sample)
        path = directory / shard_name("pairs", s)
        write_shard(path, samples)
        paths.append(path)
    return paths
