"""`LAPADataModule`, the Lightning adapter over the loaders: the stream position in checkpoints follows
the batches Lightning trained on (not those it prefetched), and DDP ranks run equal batch counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lapa.data.datamodule import LAPADataModule
from lapa.data.latent_labelled import LATENT_LABELLED
from lapa.data.loader import train_loader
from lapa.data.stream import StreamPosition

sys.path.insert(0, str(Path(__file__).parent))
from synth import data_cfg, ids_of, make_pair_shards, make_step_shards  # noqa: E402


def test_format_defaults_to_frame_pairs_and_val_loader(tmp_path):
    make_pair_shards(tmp_path / "train", shards=1, per_shard=4)
    make_pair_shards(tmp_path / "val", shards=1, per_shard=5)
    module = LAPADataModule(data_cfg(tmp_path / "train", val_shards=str(tmp_path / "val")))
    assert set(next(iter(module.train_dataloader()))) == {"frames"}
    assert ids_of(module.val_dataloader()) == list(range(5))
    assert LAPADataModule(data_cfg(tmp_path / "train")).val_dataloader() == []  # val_shards: null
    make_step_shards(tmp_path / "lat", 1, 4, "latent")
    batch = next(iter(LAPADataModule(data_cfg(tmp_path / "lat"), fmt=LATENT_LABELLED).train_dataloader()))
    assert batch["latent_tokens"].shape == (4, 4)


def test_position_follows_marked_batches_not_prefetched_ones(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=8)  # 4 batches per epoch
    module = LAPADataModule(data_cfg(tmp_path))
    loader = module.train_dataloader()
    iterator = iter(loader)
    next(iterator), next(iterator)  # Lightning fetched two ...
    loader.mark_trained()  # ... and trained on one
    assert module.state_dict()["batches"] == 1
    assert loader.position() == StreamPosition(0, 1)
    list(iterator)
    for _ in range(4):
        loader.mark_trained()
    assert loader.position() == StreamPosition(1, 0)


def _trained_epoch(loader) -> list[dict]:
    """One epoch as Lightning consumes it: every batch handed out is marked when its step starts."""
    batches = []
    for batch in loader:
        loader.mark_trained()
        batches.append(batch)
    return batches


@pytest.mark.parametrize("workers, resampled", [(0, False), (2, False), (2, True)])
def test_resumed_module_continues_with_the_same_batches(tmp_path, workers, resampled):
    """Stop in the middle of epoch 1, hand a fresh module the checkpoint's state: the remaining batches
    are those the uninterrupted run saw, samples and augmentation alike."""
    make_pair_shards(tmp_path, shards=4, per_shard=6)
    cfg = data_cfg(tmp_path, num_workers=workers, resampled=resampled, epoch_size=24 if resampled else None,
                   hflip=True, color_jitter=0.2, random_erasing=0.5, shuffle_buffer=10)
    loader = LAPADataModule(cfg).train_dataloader()
    epochs = [_trained_epoch(loader), _trained_epoch(loader)]
    assert len(epochs[1]) >= 5 and ids_of(epochs[0]) != ids_of(epochs[1])  # epochs differ in order
    module = LAPADataModule(cfg)
    module.load_state_dict({"epoch": 1, "batches": 3, "stream": train_loader(cfg).fingerprint()})
    resumed = list(module.train_dataloader())
    assert len(resumed) == len(epochs[1]) - 3
    for want, got in zip(epochs[1][3:], resumed):
        assert torch.equal(want["frames"], got["frames"])
    again = LAPADataModule(cfg).train_dataloader()  # and a fresh run repeats epoch 0 exactly
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(epochs[0], again))


def test_reloaded_train_loader_continues_where_the_last_one_stood(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=8)
    module = LAPADataModule(data_cfg(tmp_path))
    first = module.train_dataloader()
    list(first)
    for _ in range(4):
        first.mark_trained()
    assert module.train_dataloader().position() == StreamPosition(1, 0)


DDP_SCRIPT = Path(__file__).parent / "ddp_smoke.py"


@pytest.mark.timeout(300)
def test_ddp_two_cpu_ranks_equal_batch_counts(tmp_path):
    make_pair_shards(tmp_path / "shards", shards=3, per_shard=7)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path / "shards"), str(out)],
                          capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # 21 samples, 2 ranks x batch 2 -> 5 batches per rank; 2 workers -> ceil(5/2)=3 each -> 6 per epoch.
    assert counts[0]["batches"] == counts[1]["batches"] == [6, 6]
    assert counts[0]["shape"] == [2, 3, 2, 16, 16]
