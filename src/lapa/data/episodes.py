"""Choosing a few whole demonstrations from robot-step shards (`data.max_episodes=N`, Stage 3).

Stage 3 exists for the few-demonstration regime (DESIGN.md section 14: 10 / 20 / 50 demos), so a run
must train on exactly N whole episodes, the same N for a given seed whatever the shard layout:

    index = scan_episodes(shards)                 # episode_id -> steps and shards (json members only)
    chosen = choose_episodes(index, n, seed)       # N episode ids, nested in N: 10 of seed s lie in its 20
    keep = KeepEpisodes(chosen.ids)                # picklable predicate on raw tar samples
    read = functools.partial(read_episodes, keep=keep)   # a `read(urls)` for `stream.TrainStream`

`chosen.urls` are the only shards holding the chosen episodes and `chosen.steps` their samples (the
epoch size of a resampled stream); `episode_actions(chosen.urls, chosen.ids)` their actions (what the
action tokenizer is fitted on). The choice is a seeded permutation of the sorted episode ids, so it
does not depend on the shard order, and the first N of it are the choice for N.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from lapa.config import require
from lapa.data.formats import ACTION_DIM
from lapa.data.shards import decode_npy, list_shards
from lapa.data.tar_reader import read_shards

log = logging.getLogger(__name__)


@dataclass
class EpisodeIndex:
    """What the shards hold: steps per episode id, and the shards each episode has samples in."""

    steps: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[str]] = field(default_factory=dict)
    unreadable: int = 0  # json members without a usable episode_id (the loader skips those samples too)

    @property
    def ids(self) -> list[str]:
        return sorted(self.steps)


@dataclass(frozen=True)
class EpisodeChoice:
    """N chosen episodes: their ids, their step count and the shards that hold them (sorted)."""

    ids: frozenset[str]
    steps: int
    urls: list[str]


def scan_episodes(shards: str | Iterable[str]) -> EpisodeIndex:
    """Episode ids and step counts of local robot-step shards (folder, glob, braces or list), from the
    `KEY.json` members only: tar headers are read and the images skipped, not decoded."""
    index = EpisodeIndex()
    for url in list_shards(shards):
        if "://" in url or url.startswith("pipe:"):
            raise ValueError(f"cannot scan episodes of remote shard {url}: list local shards")
        with tarfile.open(url) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name.partition(".")[2] != "json":
                    continue
                try:
                    episode = json.loads(tar.extractfile(member).read()).get("episode_id")
                except (ValueError, AttributeError):  # bad JSON, or JSON that is not an object
                    episode = None
                if not isinstance(episode, str):
                    index.unreadable += 1
                    continue
                index.steps[episode] = index.steps.get(episode, 0) + 1
                held = index.shards.setdefault(episode, [])
                if not held or held[-1] != url:
                    held.append(url)
    if index.unreadable:
        log.warning("episodes: %d sample(s) without a usable episode_id in their json were left out",
                    index.unreadable)
    return index


def choose_episodes(index: EpisodeIndex, n: int | None, seed: int = 0, key: str = "data.max_episodes"
                    ) -> EpisodeChoice:
    """`n` whole episodes of `index` chosen by `seed` (None: all). A seeded permutation of the sorted ids:
    the same ids for the same shards' content and seed, and the choice for n is the first n of it, so
    the episodes of a smaller n are among those of a larger one. ConfigError (naming `key`) when the
    shards hold fewer than n episodes."""
    ids = index.ids
    require(n is None or n >= 1, key, n, "must be >= 1 or null (every episode)")
    require(n is None or n <= len(ids), key, n, f"the shards hold only {len(ids)} episodes")
    if n is None:
        chosen = ids
    else:
        order = np.random.default_rng(seed).permutation(len(ids))
        chosen = [ids[i] for i in order[:n]]
    urls = sorted({url for episode in chosen for url in index.shards[episode]})
    return EpisodeChoice(frozenset(chosen), sum(index.steps[e] for e in chosen), urls)


def step_actions(shards: str | Iterable[str],
                 episodes: Iterable[str] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(episode id, step, action float32 [7]) of every valid step of `episodes` (None: all) in local
    robot-step shards, in shard order, read from the `.json` and `.action.npy` members only. Steps whose
    action is not 7 finite numbers, or whose json lacks its episode id or step, are left out, as the
    loader leaves them out."""
    keep = None if episodes is None else frozenset(episodes)
    for url in list_shards(shards):
        parts: dict[str, dict[str, bytes]] = {}
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, suffix = member.name.rsplit("/", 1)[-1].partition(".")
                if member.isfile() and suffix in ("json", "action.npy"):
                    parts.setdefault(key, {})[suffix] = tar.extractfile(member).read()
        for sample in parts.values():
            try:
                meta = json.loads(sample["json"])
                action = decode_npy(sample["action.npy"])
            except Exception:  # a missing part, corrupt json or .npy (numpy raises several types)
                continue
            episode, step = meta.get("episode_id"), meta.get("step")
            if (keep is not None and episode not in keep) or not isinstance(step, int) or episode is None:
                continue
            if action.shape == (ACTION_DIM,) and action.dtype.kind in "iuf" and np.isfinite(action).all():
                yield str(episode), step, action.astype(np.float32)


def episode_actions(shards: str | Iterable[str], episodes: Iterable[str] | None = None) -> np.ndarray:
    """float32 `[N, 7]`: the actions of `episodes` (None: all) in shard order (`step_actions`): what the
    action tokenizer is fitted on (the training demonstrations, e.g. `chosen.urls, chosen.ids`)."""
    rows = [action for _, _, action in step_actions(shards, episodes)]
    return np.stack(rows) if rows else np.zeros((0, ACTION_DIM), dtype=np.float32)


class KeepEpisodes:
    """Predicate on raw tar samples: whether the sample's `json` names one of `episodes`. Picklable (it
    travels into DataLoader workers). A sample without a readable json is not kept (not counted here: the
    format's reader counts it where it reads it)."""

    def __init__(self, episodes: Iterable[str]) -> None:
        self.episodes = frozenset(episodes)

    def __call__(self, sample: dict) -> bool:
        data = sample.get("json")
        if data is None:
            return False
        try:
            meta = json.loads(data)
        except ValueError:
            return False
        return isinstance(meta, dict) and meta.get("episode_id") in self.episodes

    def __repr__(self) -> str:
        return f"KeepEpisodes({len(self.episodes)} episodes)"


def read_episodes(urls: Iterable[str], keep: KeepEpisodes) -> Iterator[dict]:
    """`tar_reader.read_shards(urls)` without the samples `keep` rejects: filtering before the shuffle
    buffer, so the buffer holds only chosen samples. `functools.partial(read_episodes, keep=keep)` is a
    picklable `read` for `stream.TrainStream`."""
    return (sample for sample in read_shards(urls) if keep(sample))


class EpisodeFields:
    """A format's `fields` restricted to `keep`'s episodes: other samples give None (not counted as
    skipped). For loaders that read in order (`eval_loader`), where filtering after reading is harmless:
    `dataclasses.replace(ROBOT_STEPS, fields=EpisodeFields(ROBOT_STEPS.fields, keep))`."""

    def __init__(self, fields, keep: KeepEpisodes) -> None:
        self.fields, self.keep = fields, keep

    def __call__(self, sample: dict) -> dict | None:
        return self.fields(sample) if self.keep(sample) else None
