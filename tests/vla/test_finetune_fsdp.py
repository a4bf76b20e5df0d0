"""`lapa finetune` on 2 CPU ranks (Lightning ModelParallelStrategy: FSDP2 over gloo, `configure_model`),
in a subprocess (Lightning starts the second rank): it trains, validates in lockstep when one rank has no
validation shard (without lockstep that rank would leave the others waiting in FSDP's all-gather for
ever), counts every held-out step once, writes its sharded checkpoints atomically, resumes from them, and
exports a model that reloads on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lapa.vla import VLA
from lapa.vla.action_tokenizer import ActionTokenizer
from robot_shards import make_robot_shards


def test_two_ranks_finetune_validate_in_lockstep_and_export(tmp_path: Path) -> None:
    make_robot_shards(tmp_path / "train", [(0, 0), (1, 1), (2, 0), (3, 1)], per_shard=8)  # 4 shards
    make_robot_shards(tmp_path / "val", [(0, 0)], prefix="val", seed=1, per_shard=16)  # 8 steps, 1 shard
    out = tmp_path / "run"
    args = ["experiment=finetune_debug", "init=scratch", "cluster.devices=2", "cluster.accelerator=cpu",
            "data.batch_size=4", "data.shuffle_buffer=8", "training.max_steps=6", "training.val_check_interval=3",
            "training.log_every_n_steps=1", "training.checkpoint.every_n_steps=3", "training.scheduler.warmup_steps=1",
            "training.scheduler.total_steps=8",  # the same lr schedule for the 6-step, resumed and 8-step runs
            f"data.train_shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def finetune(*extra: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "lapa.cli", "finetune", *args, *extra], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    assert "distributed_backend=gloo" in finetune()
    ckpt = out / "checkpoints"
    assert (ckpt / "last.ckpt").is_dir() and (ckpt / "step_00000006.ckpt" / ".metadata").is_file()  # DCP
    assert not list(ckpt.glob(".*partial*")) and not list(ckpt.glob(".*old-*"))  # put in place atomically
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6
    val = summary["final_val"]
    assert val["samples"] == 8  # rank 1 ran dummy batches only; rank 0's 8 steps counted once
    assert 0.0 <= val["nmse"] < 1.0 and val["loss"] > 0
    model = VLA.from_pretrained(out / "export")  # gathered from the shards into one plain model
    tok = ActionTokenizer.load(out / "export")
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 64, 64), **model.tokenize(["push the block"]))
    assert logits.shape == (1, 7, tok.num_bins) and torch.isfinite(logits).all()

    # resume from the sharded last.ckpt to 8 steps (its final validation re-enters configure_model): the
    # weights of an uninterrupted 8-step run
    assert "resuming from" in finetune("training.max_steps=8", "resume=auto")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["steps_this_run"] == 2
    whole = tmp_path / "whole"
    finetune("training.max_steps=8", f"output_dir={whole}")
    a, b = load_file(str(out / "export" / "model.safetensors")), load_file(str(whole / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
