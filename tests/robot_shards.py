"""Tiny robot-step shards with learnable actions for the finetune tests (imported by name).

Each episode has a colour c (the image: that flat colour plus noise) and a verb v (the instruction
"<verb> the block"); its actions depend on (c, v), plus a small drift with the step t in z (so an action
chunk differs from the step's own action):

    [0.1 c - 0.15, 0.05 (2 v - 1), 0.02 c v + 0.001 t, 0, 0, 0.2 (c % 2) - 0.1, 2 v - 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lapa.data.images import encode_jpeg
from lapa.data.shards import ShardWriter

COLOURS = [(210, 40, 40), (40, 190, 60), (40, 70, 220), (230, 210, 40)]
VERBS = ["push", "lift"]


def action(c: int, v: int, t: int) -> np.ndarray:
    return np.array([0.1 * c - 0.15, 0.05 * (2 * v - 1), 0.02 * c * v + 0.001 * t, 0.0, 0.0,
                     0.2 * (c % 2) - 0.1, 2 * v - 1], dtype=np.float32)


def make_robot_shards(directory: Path, episodes: list[tuple[int, int]], steps: int = 8, size: int = 64,
                      per_shard: int = 16, prefix: str = "ep", seed: int = 0) -> Path:
    """One episode per (colour, verb) pair, `steps` steps each, ids f"{prefix}{i:03d}"."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with ShardWriter(directory, prefix="demos", max_count=per_shard) as writer:
        for i, (c, v) in enumerate(episodes):
            episode = f"{prefix}{i:03d}"
            for t in range(steps):
                img = np.clip(np.array(COLOURS[c], np.float32) + rng.normal(0, 8, (size, size, 3)), 0, 255)
                writer.write({"__key__": f"{episode}_{t:03d}", "jpg": encode_jpeg(img.astype(np.uint8)),
                              "txt": f"{VERBS[v]} the block", "action.npy": action(c, v, t),
                              "json": {"episode_id": episode, "step": t, "task": VERBS[v]}})
    return directory
