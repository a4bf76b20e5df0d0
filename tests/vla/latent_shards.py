"""Latent-labelled shards with learnable labels for the train-vla tests (imported by name).

Sample n: the image is a noisy flat colour c (one of 4) with a grey distractor square at a random
place; the instruction is "<verb> the <object>" with verb v (push / lift) and a random object word. The 4
latent tokens depend on both, and only on them:

    [2c + v, c, (3c + 5v) mod 8, 6 + v]

so the image (c) and the text (v) must both be read. Per-position floors (most frequent label, with c and
v balanced): 1/8, 1/4, 1/4, 1/2 (mean 0.28).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lapa.data.images import encode_jpeg
from lapa.data.shards import shard_name, write_shard

COLOURS = [(210, 40, 40), (40, 190, 60), (40, 70, 220), (230, 210, 40)]
VERBS = ["push", "lift"]
OBJECTS = ["cube", "block", "can", "box"]
SIZE = 64


def label(c: int, v: int) -> np.ndarray:
    return np.array([2 * c + v, c, (3 * c + 5 * v) % 8, 6 + v], dtype=np.int64)


def make_latent_shards(directory: Path, shards: int, per_shard: int, seed: int = 0, size: int = SIZE,
                       tokens: int = 4) -> list[Path]:
    """Shards `latent-00000i.tar` with per_shard samples each; combinations (c, v) cycle through all 8, so
    every shard of a multiple of 8 samples is balanced. `tokens` != 4 writes labels of another length."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            n = s * per_shard + i
            c, v = (n % 8) // 2, n % 2
            img = np.clip(np.array(COLOURS[c], dtype=np.float32) + rng.normal(0, 12, (size, size, 3)), 0, 255)
            x, y = rng.integers(0, size - size // 4, size=2)
            img[y:y + size // 4, x:x + size // 4] = 128
            lab = label(c, v)
            lab = np.resize(lab, tokens) if tokens != 4 else lab
            samples.append({"__key__": f"s{s:02d}_{i:05d}", "jpg": encode_jpeg(img.astype(np.uint8)),
                            "txt": f"{VERBS[v]} the {OBJECTS[rng.integers(len(OBJECTS))]}",
                            "latent.npy": lab, "json": {"n": n, "colour": c, "verb": v}})
        path = directory / shard_name("latent", s)
        write_shard(path, samples)
        paths.append(path)
    return paths
