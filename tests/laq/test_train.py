"""`lapa train-laq`: config composition and validation, exact resume, and end-to-end runs on shards
(including a run killed with SIGKILL and continued with resume=auto)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from laq_train_fixtures import PairDataModule, moving_square_pairs, tiny_model_config, write_pair_shards

from lapa.cli import main as lapa_main
from lapa.config import ConfigError, load
from lapa.data.loader import DataConfig
from lapa.laq import load_model
from lapa.laq.optim import OptimizerConfig
from lapa.laq.task import CheckpointConfig, TrainingConfig
from lapa.laq.train import TrainLAQConfig, run
from lapa.training.cluster import ClusterConfig
from lapa.training.schedule import SchedulerConfig

LAQ_BIN = str(Path(sys.executable).with_name("lapa"))
# Small and fast on top of experiment=laq_debug (the debug preset's model, a 64-px 8x8 grid).
FAST = ["data.batch_size=4", "data.shuffle_buffer=8", "data.num_workers=0", "training.log_every_n_steps=1",
        "training.val_check_interval=2", "training.limit_val_batches=2", "training.checkpoint.every_n_steps=2",
        "training.num_vis_rows=2", "training.scheduler.warmup_steps=2", "training.scheduler.total_steps=50"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_pair_shards(root / "train", 24, seed=10)
    write_pair_shards(root / "val", 8, seed=11)
    return root


def test_help_and_cfg_compose_the_debug_preset(capsys):
    assert lapa_main(["train-laq", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: lapa train-laq" in text and "resume=auto" in text
    assert lapa_main(["train-laq", "--cfg", "experiment=laq_debug"]) == 0
    cfg = capsys.readouterr().out
    assert "experiment_name: laq_debug" in cfg and "image_size: 64" in cfg and "max_steps: 800" in cfg

    debug = load("train_laq", TrainLAQConfig, ["experiment=laq_debug"])
    assert (debug.model.image_size, debug.model.patch_size, debug.data.image_size) == (64, 8, 64)
    assert debug.cluster.resolved_precision() == "32-true" and debug.output_dir == "runs/laq_debug"
    full = load("train_laq", TrainLAQConfig, ["experiment=laq_full"])
    assert (full.model.dim, full.cluster.num_nodes * full.cluster.devices, full.data.batch_size) == (1024, 8, 256)
    assert full.cluster.resolved_precision() == "bf16-mixed" and full.training.optimizer.name == "adamw"
    ref = load("train_laq", TrainLAQConfig, ["training=laq_reference"])
    t = ref.training
    assert (t.optimizer.name, t.optimizer.betas, t.optimizer.weight_decay) == ("adam", [0.9, 0.99], 0.0)
    assert (t.scheduler.name, t.scheduler.warmup_steps, t.gradient_clip_val) == ("constant", 0, 0.5)


@pytest.mark.parametrize("override, key", [
    ("logger=mlflow", "logger="),
    ("resume=/no/such/file.ckpt", "resume="),
    ("data.image_size=128", "data.image_size="),
    ("training.optimizer.lr=0", "training.optimizer.lr="),
    ("training.checkpoint.every_n_steps=-5", "training.checkpoint.every_n_steps="),
])
def test_invalid_configs_name_the_key(override, key, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load("train_laq", TrainLAQConfig, [override])
    assert lapa_main(["train-laq", override]) == 2
    assert key in capsys.readouterr().err


def _in_memory_cfg(out: Path, max_steps: int, resume: str | None = None) -> TrainLAQConfig:
    training = TrainingConfig(
        optimizer=OptimizerConfig(lr=2e-3), scheduler=SchedulerConfig(warmup_steps=2, total_steps=8),
        max_steps=max_steps, val_check_interval=4, limit_val_batches=1, log_every_n_steps=1,
        num_vis_rows=2, checkpoint=CheckpointConfig(every_n_steps=2, keep_periodic=2))
    return TrainLAQConfig(model=tiny_model_config(), data=DataConfig(image_size=64), training=training,
                          cluster=ClusterConfig(accelerator="cpu"), output_dir=str(out), resume=resume,
                          experiment_name="resume_test")


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    frames, _ = moving_square_pairs(16, seed=5)
    data = lambda: PairDataModule(frames, frames[:8], batch_size=8)  # noqa: E731 (2 batches per epoch)

    assert run(_in_memory_cfg(tmp_path / "straight", 8), data()) == 0
    assert run(_in_memory_cfg(tmp_path / "split", 4), data()) == 0
    half = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)
    assert half["global_step"] == 4
    assert run(_in_memory_cfg(tmp_path / "split", 8, resume="auto"), data()) == 0

    summary = json.loads((tmp_path / "split/summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"]) == (8, 4)
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 8
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in state_a:
        assert float(state_a[i]["step"]) == float(state_b[i]["step"]) == 8
        torch.testing.assert_close(state_b[i]["exp_avg_sq"], state_a[i]["exp_avg_sq"], rtol=0, atol=1e-9)
    # The loss curve continues: the resumed run logged steps 5..8 only, in a new CSV version folder.
    logged = sorted((tmp_path / "split/logs").glob("version_*/metrics.csv"))
    assert len(logged) == 2
    steps = {int(r["step"]) for r in csv.DictReader(logged[1].open()) if r.get("train/loss_recon")}
    assert steps and min(steps) >= 4


def test_resume_mid_epoch_on_shards_matches_an_uninterrupted_run(shards, tmp_path):
    """Streaming shards (6 batches per epoch), stopped after 5 batches and resumed to 9: the data
    stream, its augmentation and the model continue exactly as in a run that never stopped."""
    def cfg(out: Path, max_steps: int, resume: str | None = None) -> TrainLAQConfig:
        data = DataConfig(train_shards=f"{shards}/train", val_shards=f"{shards}/val", batch_size=4,
                          num_workers=0, image_size=64, shuffle_buffer=8, hflip=True, color_jitter=0.1)
        return dataclasses.replace(_in_memory_cfg(out, max_steps, resume), data=data)

    assert run(cfg(tmp_path / "straight", 9)) == 0
    assert run(cfg(tmp_path / "split", 5)) == 0
    assert run(cfg(tmp_path / "split", 9, resume="auto")) == 0
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 9
    # The data stream's position (epoch 1, 3 batches in) whatever Lightning's epoch counter says.
    assert (a["LAPADataModule"]["epoch"], a["LAPADataModule"]["batches"]) == (1, 3)
    assert (b["LAPADataModule"]["epoch"], b["LAPADataModule"]["batches"]) == (1, 3)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


def test_resume_after_a_kill_between_periodic_and_last_save_rotates_cleanly(tmp_path):
    """A kill after `step_4.ckpt` was written but before `last.ckpt` was updated leaves an orphan newer
    than the resumed state: the resumed run replaces it and keeps exactly `keep_periodic` files."""
    frames, _ = moving_square_pairs(16, seed=5)
    out = tmp_path / "run"
    assert run(_in_memory_cfg(out, 4), PairDataModule(frames, frames[:8], batch_size=8)) == 0
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.ckpt")) == ["step_00000002.ckpt", "step_00000004.ckpt"]
    (ckpts / "last.ckpt").write_bytes((ckpts / "step_00000002.ckpt").read_bytes())  # the kill's state

    assert run(_in_memory_cfg(out, 6, resume="auto"), PairDataModule(frames, frames[:8], batch_size=8)) == 0
    assert sorted(p.name for p in ckpts.glob("step_*.ckpt")) == ["step_00000004.ckpt", "step_00000006.ckpt"]
    assert torch.load(ckpts / "step_00000004.ckpt", weights_only=True)["global_step"] == 4


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"train-laq exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def test_killed_cli_run_resumes_on_shards(shards, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["experiment=laq_debug", f"data.train_shards={shards}/train", f"data.val_shards={shards}/val",
              f"output_dir={out}", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([LAQ_BIN, "train-laq", *common, "training.max_steps=1000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "checkpoints" / "last.ckpt", proc, timeout=240)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: last.ckpt must still be whole
    proc.wait()
    killed = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    saved_step = killed["global_step"]
    assert saved_step >= 2 and saved_step % 2 == 0
    assert killed["lapa_config"]["experiment_name"] == "laq_debug"
    assert "pixel_convention: signed_tanh" in killed["lapa_config_yaml"]
    # A kill during a save may leave a temporary file, never a partial file under a final name.

    target = saved_step + 4
    assert lapa_main(["train-laq", *common, f"training.max_steps={target}", "resume=auto"]) == 0
    printed = capsys.readouterr().out
    assert not list((out / "checkpoints").glob(".*.tmp"))  # stale temporary files were cleaned up
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in printed
    assert "copy-frame" in printed and str(out.resolve()) in printed

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"]) == (target, 4)
    final = summary["final_val"]
    assert final["psnr"] is not None and 10 < final["psnr_copy"] < 30
    assert 0 < final["codebook_utilization"] <= 1
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["global_step"] == target
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert len(list((out / "checkpoints").glob("step_*.ckpt"))) == 2  # keep_periodic of the preset
    assert "experiment_name: laq_debug" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in (out / "recon").glob("*.png"))[-1] == f"step_{target:08d}.png"
    rows = [r for f in sorted((out / "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    for key in ("train/loss_recon", "train/psnr", "train/psnr_copy", "val/psnr", "val/psnr_copy",
                "val/perplexity", "val/codebook_utilization"):
        assert any(r.get(key) for r in rows), key

    model = load_model(out / "laq_final.pt")
    frames, _ = moving_square_pairs(2, seed=99)
    with torch.no_grad():
        assert model.quantize(frames).shape == (2, 4)
        assert model.reconstruct(frames).shape == (2, 3, 64, 64)
