"""`data.max_episodes`: the training loader reads only the chosen episodes' steps; the choice is in the
stream's fingerprint; validation keeps every held-out episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapa.config import ConfigError
from lapa.data.episodes import choose_episodes, scan_episodes
from lapa.data.images import encode_jpeg
from lapa.data.loader import DataConfig, eval_loader, train_loader
from lapa.data.robot_steps import ROBOT_STEPS
from lapa.data.shards import ShardWriter

EPISODES = {f"ep{i:02d}": 3 + i % 3 for i in range(6)}  # 6 episodes of 3..5 steps: 24 samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("steps")
    with ShardWriter(root, prefix="steps", max_count=5) as writer:
        for e, (episode, steps) in enumerate(EPISODES.items()):
            for t in range(steps):
                writer.write({"__key__": f"{episode}_{t:03d}", "jpg": encode_jpeg(np.full((8, 8, 3), 20 * e, np.uint8)),
                              "txt": "push", "action.npy": np.array([e, t, 0, 0, 0, 0, 1], np.float32),
                              "json": {"episode_id": episode, "step": t, "task": "push"}})
    return root


def _cfg(shards: Path, **kw) -> DataConfig:
    return DataConfig(train_shards=str(shards), val_shards=str(shards), batch_size=4, num_workers=0, image_size=8,
                      shuffle_buffer=8, color_jitter=0.0, hflip=False, **kw)


def test_loader_with_max_episodes_yields_only_the_chosen_episodes(shards):
    cfg = _cfg(shards, max_episodes=2, episodes_seed=3)
    chosen = choose_episodes(scan_episodes(shards), 2, seed=3)
    loader = train_loader(cfg, ROBOT_STEPS, rank=0, world=1)
    seen = [(e, int(s)) for batch in loader for e, s in zip(batch["episode_id"], batch["step"], strict=True)]
    expected = {(e, t) for e in chosen.ids for t in range(EPISODES[e])}
    whole = (chosen.steps // 4) * 4  # full batches only
    assert len(seen) == whole and set(seen) <= expected and len(set(seen)) == len(seen)
    assert loader.urls == chosen.urls  # only the shards holding them are read
    # the choice is part of the stream's identity: a state of another choice restarts its epoch
    assert loader.fingerprint() != train_loader(_cfg(shards, max_episodes=3, episodes_seed=3), ROBOT_STEPS,
                                                rank=0, world=1).fingerprint()
    # resampled (multi-GPU) epochs count only the chosen steps
    resampled = train_loader(_cfg(shards, max_episodes=2, episodes_seed=3, resampled=True), ROBOT_STEPS,
                             rank=0, world=1)
    assert len(resampled) == chosen.steps // 4
    # validation keeps every episode
    val = {e for batch in eval_loader(cfg, ROBOT_STEPS, rank=0, world=1) for e in batch["episode_id"]}
    assert val == set(EPISODES)


def test_too_many_episodes_names_the_key(shards):
    with pytest.raises(ConfigError, match="data.max_episodes"):
        train_loader(_cfg(shards, max_episodes=7), ROBOT_STEPS, rank=0, world=1)
    with pytest.raises(ConfigError, match="data.max_episodes"):
        _cfg(shards, max_episodes=0)
