"""Choosing N whole demonstrations by seed (`data.max_episodes`): scan, choice, filters."""

from __future__ import annotations

import dataclasses
import functools
import pickle
from pathlib import Path

import numpy as np
import pytest

from lapa.config import ConfigError
from lapa.data.batching import Batches
from lapa.data.episodes import (
    EpisodeFields,
    KeepEpisodes,
    choose_episodes,
    episode_actions,
    read_episodes,
    scan_episodes,
)
from lapa.data.images import encode_jpeg
from lapa.data.loader import DataConfig, eval_loader
from lapa.data.robot_steps import ROBOT_STEPS
from lapa.data.shards import ShardWriter
from lapa.data.stream import TrainStream
from lapa.data.tar_reader import read_shards

STEPS = {f"ep{i:02d}": 2 + i % 4 for i in range(12)}  # 12 episodes of 2..5 steps: 40 samples


def step_samples(order_seed: int | None = None) -> list[dict]:
    """Every step of STEPS; the action's first value says its episode (index) and the second its step."""
    samples = []
    for e, (episode, steps) in enumerate(STEPS.items()):
        for t in range(steps):
            img = np.full((8, 8, 3), 10 * e, dtype=np.uint8)
            samples.append({"__key__": f"{episode}_{t:04d}", "jpg": encode_jpeg(img), "txt": "push",
                            "action.npy": np.array([e, t, 0, 0, 0, 0, 1], dtype=np.float32),
                            "json": {"episode_id": episode, "step": t, "task": "push"}})
    if order_seed is not None:
        samples = [samples[i] for i in np.random.default_rng(order_seed).permutation(len(samples))]
    return samples


def write(directory: Path, samples: list[dict], per_shard: int) -> Path:
    with ShardWriter(directory, prefix="steps", max_count=per_shard) as writer:
        for sample in samples:
            writer.write(sample)
    return directory


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    samples = step_samples()
    samples.insert(7, {"__key__": "broken", "jpg": samples[0]["jpg"], "txt": "x",
                       "action.npy": np.zeros(7, np.float32), "json": b"{not json"})
    samples.insert(9, {"__key__": "noid", "jpg": samples[0]["jpg"], "txt": "x",
                       "action.npy": np.zeros(7, np.float32), "json": {"step": 0}})
    return write(tmp_path_factory.mktemp("steps"), samples, per_shard=6)


def test_scan_counts_steps_and_shards_from_the_json_members(shards):
    index = scan_episodes(shards)
    assert index.steps == STEPS
    assert index.unreadable == 2
    # ep00 (2 steps) sits in the first shard; ep02 (4 steps, samples 5..8 + 2 inserted) spans two shards
    assert [Path(u).name for u in index.shards["ep00"]] == ["steps-000000.tar"]
    assert [Path(u).name for u in index.shards["ep02"]] == ["steps-000000.tar", "steps-000001.tar"]


def test_choice_is_seeded_nested_and_independent_of_the_shard_layout(shards, tmp_path):
    index = scan_episodes(shards)
    a, b = choose_episodes(index, 5, seed=1), choose_episodes(index, 5, seed=1)
    assert a == b and len(a.ids) == 5
    assert a.steps == sum(STEPS[e] for e in a.ids)
    assert choose_episodes(index, 5, seed=2).ids != a.ids
    assert a.ids < choose_episodes(index, 8, seed=1).ids  # 5 of seed 1 lie among its 8
    held = {url for e in a.ids for url in index.shards[e]}
    assert set(a.urls) == held and len(a.urls) < 8
    assert choose_episodes(index, None).ids == frozenset(STEPS)
    # the same episodes in another order and other shard sizes: the same choice
    other = scan_episodes(write(tmp_path / "other", step_samples(order_seed=5), per_shard=11))
    assert choose_episodes(other, 5, seed=1).ids == a.ids


def test_asking_for_more_episodes_than_exist_fails_naming_the_key(shards):
    index = scan_episodes(shards)
    with pytest.raises(ConfigError, match=r"data.max_episodes=13: the shards hold only 12 episodes"):
        choose_episodes(index, 13)
    with pytest.raises(ConfigError, match="data.max_episodes=0"):
        choose_episodes(index, 0)


def test_read_filter_keeps_whole_chosen_episodes_only(shards):
    choice = choose_episodes(scan_episodes(shards), 4, seed=3)
    keep = pickle.loads(pickle.dumps(KeepEpisodes(choice.ids)))  # travels into DataLoader workers
    read = pickle.loads(pickle.dumps(functools.partial(read_episodes, keep=keep)))
    kept = list(read(choice.urls))
    steps = sorted((s["__key__"].split("_")[0], int(s["__key__"].split("_")[1])) for s in kept)
    assert steps == sorted((e, t) for e in choice.ids for t in range(STEPS[e]))
    assert len(list(read_shards(choice.urls))) > len(kept)  # the shards hold other episodes too


def test_train_stream_with_the_read_hook_yields_only_chosen_episodes(shards):
    choice = choose_episodes(scan_episodes(shards), 3, seed=0)
    batches = Batches(ROBOT_STEPS.image_parts, batch_size=2, size=8, partial_last=True,
                      fields=ROBOT_STEPS.fields, collate=ROBOT_STEPS.collate, in_flight=4)
    stream = TrainStream(choice.urls, functools.partial(read_episodes, keep=KeepEpisodes(choice.ids)),
                         batches, seed=0, rank=0, world=1, shard_shuffle=True, shuffle_buffer=16,
                         batches_per_worker=None, num_workers=0)
    seen = [(e, int(s)) for b in stream for e, s in zip(b["episode_id"], b["step"])]
    assert sorted(seen) == sorted((e, t) for e in choice.ids for t in range(STEPS[e]))


def test_eval_loader_with_restricted_fields(shards):
    choice = choose_episodes(scan_episodes(shards), 2, seed=4)
    fmt = dataclasses.replace(ROBOT_STEPS, fields=EpisodeFields(ROBOT_STEPS.fields, KeepEpisodes(choice.ids)))
    pickle.dumps(fmt)
    cfg = DataConfig(train_shards=str(shards), val_shards=str(shards), batch_size=4, num_workers=0,
                     image_size=8, prefetch_factor=2)
    actions = np.concatenate([b["actions"].numpy() for b in eval_loader(cfg, fmt, rank=0, world=1)])
    names = list(STEPS)
    assert sorted(names[int(a[0])] for a in actions) == sorted(e for e in choice.ids for _ in range(STEPS[e]))


def test_episode_actions_are_the_chosen_episodes_actions(shards):
    choice = choose_episodes(scan_episodes(shards), 5, seed=2)
    actions = episode_actions(choice.urls, choice.ids)
    names = list(STEPS)
    assert actions.dtype == np.float32 and actions.shape == (choice.steps, 7)
    assert sorted((names[int(a[0])], int(a[1])) for a in actions) == sorted(
        (e, t) for e in choice.ids for t in range(STEPS[e]))
    everything = episode_actions(shards)
    # the two samples without a usable episode id are left out, as the loader skips them ("bad meta")
    assert len(everything) == sum(STEPS.values())
