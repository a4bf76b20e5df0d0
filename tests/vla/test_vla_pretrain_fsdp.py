"""`lapa train-vla` on 2 CPU ranks (Fabric ModelParallelStrategy: FSDP2 over gloo), each run a `lapa` process
in a subprocess (Fabric starts the second rank): the loss falls, checkpoints are DCP directories, a run
resumed from one continues exactly, and the meta-device initialisation (with activation checkpointing)
gives the numbers of a direct one (without)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from latent_shards import make_latent_shards

from lapa.training.run_dir import step_checkpoints

COMMON = ["experiment=vla_debug", "cluster.devices=2", "cluster.accelerator=cpu", "data.batch_size=4",
          "training.log_every_n_steps=1", "training.val_check_interval=4", "training.checkpoint.every_n_steps=4",
          "training.scheduler.warmup_steps=2", "training.scheduler.total_steps=8", "training.optimizer.lr=3e-3"]


def _lapa(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lapa.cli", "train-vla", *COMMON, *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _weights(export: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(export / "model.safetensors"))


def test_two_ranks_train_checkpoint_and_resume_exactly(tmp_path: Path) -> None:
    make_latent_shards(tmp_path / "train", 2, 16, seed=1)
    make_latent_shards(tmp_path / "val", 1, 8, seed=2)
    data = [f"data.train_shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}"]
    whole, split = tmp_path / "whole", tmp_path / "split"

    # meta-device init (auto), activation checkpointing (recomputes; changes no number)
    proc = _lapa(*data, f"output_dir={whole}", "training.max_steps=8",
                 "training.parallel.activation_checkpointing=true")
    assert "ModelParallelStrategy" in proc.stdout and "2 device(s)" in proc.stdout
    ckpt = whole / "checkpoints"
    assert [n for n, p in step_checkpoints(ckpt) if p.is_dir()] == [4, 8]  # DCP directories
    assert (ckpt / "last").resolve().name == "step_00000008" and (ckpt / "step_00000008" / "meta.pt").is_file()
    with open(whole / "logs" / "version_0" / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert 1.5 < losses[1] < 2.6  # about ln 8: a sane initial model, not uninitialised memory
    assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]]) - 0.2  # it trains
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_val"]["samples"] == 8  # rank 1 had no val shard

    # The first half built directly on every rank, then resumed from the DCP checkpoint (meta-built).
    _lapa(*data, f"output_dir={split}", "training.max_steps=4", "training.init=direct")
    proc = _lapa(*data, f"output_dir={split}", "training.max_steps=8", "resume=auto")
    assert "resuming from" in proc.stdout
    a, b = _weights(whole / "export"), _weights(split / "export")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6


def test_gradient_sync_on_every_micro_batch_gives_the_same_steps(tmp_path: Path) -> None:
    """Accumulating 2 micro-batches per step on 2 ranks: reduce-scattering the gradients on every micro-batch
    (training.parallel.sync_every_microbatch=true, the memory-lean choice) or only on the last gives the
    same sums, so the same weights."""
    make_latent_shards(tmp_path / "train", 2, 16, seed=1)
    data = [f"data.train_shards={tmp_path / 'train'}", "data.val_shards=null", "training.max_steps=3",
            "training.accumulate_grad_batches=2", "training.val_check_interval=0",
            "training.checkpoint.every_n_steps=0"]
    _lapa(*data, f"output_dir={tmp_path / 'last'}")
    _lapa(*data, f"output_dir={tmp_path / 'every'}", "training.parallel.sync_every_microbatch=true")
    a, b = _weights(tmp_path / "last" / "export"), _weights(tmp_path / "every" / "export")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    for run_dir in ("last", "every"):
        summary = json.loads((tmp_path / run_dir / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["accumulate_grad_batches"] == 2 and summary["world_size"] == 2
