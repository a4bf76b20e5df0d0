"""Other labels for the same Stage 2 images: the control arms of the LAPA-effect experiment.

Both read the latent-labelled shards `lapa label` wrote and write shards of the same format (same images,
instructions and json; only `KEY.latent.npy` differs), so `lapa train-vla` trains on them unchanged:

- "actions" (the upper bound): the pair's true action (`KEY.action.npy` of its frame-pair shard, from the
  simulator's sidecar) binned into the same token grid as the LAQ's: `code_seq_len` action dimensions
  (default x, y, z, gripper), each cut into `codebook_size` equal-frequency bins fitted on the training
  pairs. What latent labels try to approach.
- "shuffled": the latent labels permuted across the pairs (seeded): the same label statistics with no
  relation to the image. What Stage 2 pretraining gives without any information.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lapa.data.shards import decode_npy, list_shards, write_shard
from lapa.data.tar_reader import shard_samples

ACTION_DIMS = (0, 1, 2, 6)  # x, y, z, gripper: the dimensions the built-in tasks use


def _members(path: str) -> dict[str, dict[str, bytes]]:
    """key -> suffix -> bytes of every sample of a tar shard, in order (WebDataset's grouping,
    `tar_reader.shard_samples`)."""
    with open(path, "rb") as stream:
        return {sample["__key__"]: {k: v for k, v in sample.items() if not k.startswith("__")}
                for sample in shard_samples(stream, path, on_error=_raise)}


def _raise(err: Exception) -> None:
    raise err  # a corrupt shard of our own labels: stop, do not write control labels from part of it


def pair_actions(pairs_dir: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """(frame-pair shard name, pair key) -> its action float32 [7], for every pair that has one."""
    out = {}
    for url in list_shards(pairs_dir):
        for key, parts in _members(url).items():
            if "action.npy" in parts:
                out[(Path(url).name, key)] = decode_npy(parts["action.npy"]).astype(np.float32)
    return out


def fit_bins(actions: np.ndarray, classes: int) -> list[np.ndarray]:
    """Per column of actions [N, D]: the inner edges of `classes` equal-frequency bins (ties merged)."""
    qs = np.linspace(0, 1, classes + 1)[1:-1]
    return [np.unique(np.quantile(actions[:, d], qs)) for d in range(actions.shape[1])]


def bin_actions(actions: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """int64 [N, D]: the bin of each value (0..len(edges[d]))."""
    return np.stack([np.searchsorted(edges[d], actions[:, d], side="right") for d in range(len(edges))], 1)


def _rewrite(src_dir: str | Path, out_dir: Path, label_of) -> int:
    """Copy every latent-labelled shard of `src_dir` to `out_dir` with `label_of(shard_name, key, meta)` as
    its latent.npy; samples it returns None for are dropped. A finished output shard is kept (resume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for url in list_shards(src_dir):
        target = out_dir / Path(url).name
        if target.exists():
            continue
        samples = []
        for key, parts in _members(url).items():
            meta = json.loads(parts["json"])
            label = label_of(Path(url).name, key, meta)
            if label is not None:
                samples.append({"__key__": key, "jpg": parts["jpg"], "txt": parts["txt"].decode(),
                                "latent.npy": np.asarray(label, dtype=np.int64), "json": meta})
        written += write_shard(target, samples)
    return written


def relabel_with_actions(latent_dirs: dict[str, str | Path], pairs_dirs: dict[str, str | Path], out_root: Path,
                         classes: int = 8, dims: tuple[int, ...] = ACTION_DIMS) -> dict:
    """Write out_root/<split>/ for each split ("train" first: the bins are fitted on it) with binned true
    actions as labels. Returns the bin edges and the counts."""
    actions = {split: pair_actions(pairs_dirs[split]) for split in latent_dirs}
    train = np.stack(list(actions["train"].values()))[:, list(dims)]
    edges = fit_bins(train, classes)
    counts = {}
    for split, src in latent_dirs.items():
        table = actions[split]

        def label_of(shard: str, key: str, meta: dict, table=table):
            action = table.get((meta.get("shard", shard), meta.get("pair_key", key)))
            return None if action is None else bin_actions(action[None, list(dims)], edges)[0]

        counts[split] = _rewrite(src, out_root / split, label_of)
    return {"dims": list(dims), "edges": [e.tolist() for e in edges], "written": counts}


def relabel_shuffled(latent_dirs: dict[str, str | Path], out_root: Path, seed: int = 0) -> dict:
    """Write out_root/<split>/ with each split's latent labels permuted across its pairs (seeded)."""
    counts = {}
    for split, src in latent_dirs.items():
        labels = {(Path(url).name, key): decode_npy(parts["latent.npy"])
                  for url in list_shards(src) for key, parts in _members(url).items()}
        keys = list(labels)
        order = np.random.default_rng([seed, len(keys)]).permutation(len(keys))
        shuffled = {keys[i]: labels[keys[j]] for i, j in enumerate(order)}
        counts[split] = _rewrite(src, out_root / split, lambda shard, key, meta, table=shuffled: table[(shard, key)])
    return {"seed": seed, "written": counts}
