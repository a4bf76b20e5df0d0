"""`lapa train-vla` on one CPU process: the loop learns, a killed run resumes exactly, checkpoints rotate,
the export reloads, the CLI runs end to end on held-out shards, and impossible configs fail at start."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from latent_shards import make_latent_shards

from lapa.cli import main as lapa_main
from lapa.config import ConfigError, load, to_schema
from lapa.data.images import encode_jpeg
from lapa.data.shards import shard_name, write_shard
from lapa.data.skips import skipped_samples
from lapa.training.run_dir import step_checkpoints
from lapa.vla import VLA, VLAConfig
from lapa.vla.pretrain import TrainVLAConfig, read_progress, run

# Small and fast on top of experiment=vla_debug.
FAST = ["data.batch_size=4", "data.shuffle_buffer=16", "training.log_every_n_steps=1",
        "training.limit_val_batches=null", "training.scheduler.warmup_steps=3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("latent")
    make_latent_shards(root / "handful", 1, 8, seed=0)
    make_latent_shards(root / "train", 2, 16, seed=1)
    make_latent_shards(root / "heldout", 1, 32, seed=2)
    return root


def _cfg(shards: Path, out: Path, *extra: str, train: str = "train", val: str | None = "heldout") -> TrainVLAConfig:
    return load("train_vla", TrainVLAConfig, ["experiment=vla_debug", *FAST, f"data.train_shards={shards / train}",
                                              f"data.val_shards={shards / val}" if val else "data.val_shards=null",
                                              f"output_dir={out}", *extra])


def _metrics(out: Path, version: int = 0) -> list[dict[str, str]]:
    with open(out / "logs" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _train_losses(out: Path, version: int = 0) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in _metrics(out, version) if r.get("train/loss")}


@pytest.fixture(scope="module")
def overfit(shards, tmp_path_factory) -> Path:
    """60 steps on 8 samples, validated on the same 8; checkpoints every 10 steps, the newest 2 kept."""
    out = tmp_path_factory.mktemp("overfit") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the function-scoped one-thread fixture
    cfg = _cfg(shards, out, "data.batch_size=8", "training.max_steps=60", "training.val_check_interval=20",
               "training.checkpoint.every_n_steps=10", "training.checkpoint.keep=2", "training.optimizer.lr=3e-3",
               train="handful", val="handful")
    try:
        assert run(cfg) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_overfits_a_handful_of_samples(overfit):
    summary = json.loads((overfit / "summary.json").read_text())
    val, floor = summary["final_val"], summary["final_val_floor"]
    assert summary["steps"] == 60 and val["samples"] == 8
    assert val["acc_top1"] == 1.0 and val["exact_match"] == 1.0 and val["acc_top3"] == 1.0
    assert all(val[f"acc_pos{i}"] == 1.0 for i in range(4))
    assert val["loss"] < 0.05 < floor["loss"]
    assert floor["acc_top1"] < 0.5  # the floor is far from perfect on these labels
    losses = _train_losses(overfit)
    assert np.mean([losses[s] for s in range(51, 61)]) < 0.1 * np.mean([losses[s] for s in range(1, 6)])


def test_rotation_keeps_the_newest_k_plus_best(overfit):
    ckpt = overfit / "checkpoints"
    summary = json.loads((overfit / "summary.json").read_text())
    steps = [n for n, _ in step_checkpoints(ckpt)]
    assert steps == sorted({50, 60} | {summary["best_step"]})  # every 10 steps, keep 2 (+ best's target)
    assert (ckpt / "last.ckpt").is_symlink() and (ckpt / "last.ckpt").resolve().name == "step_00000060.ckpt"
    assert (ckpt / "best.ckpt").resolve().name == f"step_{summary['best_step']:08d}.ckpt"
    progress = read_progress(ckpt / "last.ckpt")
    assert progress["step"] == 60 and progress["samples"] == 480
    assert np.asarray(progress["label_counts"]["counts"]).sum() == 480 * 4  # every consumed label counted


def test_export_reloads_with_the_trained_weights(overfit, shards):
    from lapa.data.latent_labelled import LATENT_LABELLED
    from lapa.data.loader import DataConfig, eval_loader

    ckpt = torch.load(overfit / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = VLA(to_schema(ckpt["progress"]["model_config"], VLAConfig), load_weights=False)
    trained.load_state_dict(ckpt["model"])
    exported = VLA.from_pretrained(overfit / "export")
    info = json.loads((overfit / "export" / "info.json").read_text())
    assert info["training"]["steps"] == 60 and info["training"]["final_val"]["acc_top1"] == 1.0
    batch = next(iter(eval_loader(DataConfig(train_shards=str(shards / "handful"), val_shards=None, batch_size=8,
                                             num_workers=0, image_size=64), LATENT_LABELLED,
                                  shards=shards / "handful", rank=0, world=1)))
    enc = trained.tokenize(batch["text"])
    with torch.no_grad():
        a = trained.eval()(batch["image"], enc["input_ids"], enc["attention_mask"])
        b = exported(batch["image"], enc["input_ids"], enc["attention_mask"])
    assert torch.equal(a, b)
    assert torch.equal(b.argmax(-1), batch["latent_tokens"])  # and it is the model that overfitted


def test_killed_run_resumes_exactly(shards, tmp_path):
    """12 steps of 2 accumulated micro-batches (3 epochs of 8 batches) uninterrupted, vs 6 steps, a fresh
    call, then resume=auto to 12: same losses after the restart, same weights, optimiser, schedule, data
    position and label counts."""
    common = ["training.accumulate_grad_batches=2", "training.scheduler.total_steps=12",
              "training.checkpoint.every_n_steps=6", "training.checkpoint.keep=5", "training.val_check_interval=4",
              "training.optimizer.lr=3e-3"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(_cfg(shards, whole, *common, "training.max_steps=12")) == 0
    assert run(_cfg(shards, split, *common, "training.max_steps=6")) == 0
    first = read_progress(split / "checkpoints" / "last.ckpt")
    assert first["step"] == 6 and first["data"]["batches"] == 4 and first["data"]["epoch"] == 1
    (split / "checkpoints" / "step_00000099.ckpt").write_bytes(b"orphan of a killed save")
    assert run(_cfg(shards, split, *common, "training.max_steps=12", "resume=auto")) == 0
    assert not (split / "checkpoints" / "step_00000099.ckpt").exists()  # removed at start

    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"]) <= 1e-6
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(int(oa[i]["step"]) == 12 for i in oa)
    for i in oa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(oa[i][key], ob[i][key], atol=1e-6, rtol=0)
    pa, pb = a["progress"], b["progress"]
    assert pa["scheduler"] == pb["scheduler"] and pb["scheduler"]["last_epoch"] == 12
    assert pa["data"] == pb["data"] and pa["label_counts"] == pb["label_counts"]
    assert pa["rotation"]["best_step"] == pb["rotation"]["best_step"]
    whole_losses, resumed = _train_losses(whole), _train_losses(split, version=1)
    assert sorted(resumed) == list(range(7, 13))
    assert all(abs(whole_losses[s] - resumed[s]) <= 1e-6 for s in resumed), (whole_losses, resumed)


def test_cli_debug_run_beats_the_floor_on_heldout_shards(shards, tmp_path, capsys):
    train = tmp_path / "train"
    make_latent_shards(train, 2, 32, seed=3)
    bad = [{"__key__": "bad_jpeg", "jpg": b"not a jpeg", "txt": "push the cube", "latent.npy": np.zeros(4, np.int64),
            "json": {}},
           {"__key__": "bad_latent", "jpg": encode_jpeg(np.zeros((64, 64, 3), np.uint8)), "txt": "lift it",
            "latent.npy": np.array([9, 0, 0, 0]), "json": {}}]
    write_shard(train / shard_name("latent", 9), bad)
    before = skipped_samples()
    out = tmp_path / "run"
    code = lapa_main(["train-vla", "experiment=vla_debug", f"data.train_shards={train}",
                      f"data.val_shards={shards / 'heldout'}", f"output_dir={out}", "training.max_steps=100",
                      "training.val_check_interval=50", "training.checkpoint.every_n_steps=50"])
    text = capsys.readouterr().out
    assert code == 0
    assert f"writing to {out.resolve()}" in text and "final val (32 samples)" in text and "export" in text
    summary = json.loads((out / "summary.json").read_text())
    val, floor = summary["final_val"], summary["final_val_floor"]
    assert val["acc_top1"] >= floor["acc_top1"] + 0.4 and val["exact_match"] > floor["exact_match"] + 0.3
    assert val["loss"] < floor["loss"]
    skipped = summary["skipped_samples"]
    for reason in ("bad jpeg", "bad latent"):  # skipped and counted, not fatal
        assert skipped.get(reason, 0) > before.get(reason, 0), skipped
    assert summary["steps_per_s"] > 0 and summary["samples_seen"] == 800
    assert (out / "config.yaml").read_text().count("experiment_name: vla_debug") == 1
    assert VLA.from_pretrained(out / "export").config.head.num_classes == 8


@pytest.mark.parametrize("override, key", [
    ("model.head.num_queries=3", "model.head.num_queries="),
    ("model.head.num_classes=4", "model.head.num_classes="),
    ("resume=/no/such/checkpoint", "resume="),
    ("training.global_batch_size=12", "training.global_batch_size="),
    ("model.stage=3", "model.stage="),
    ("cluster.strategy=ddp", "cluster.strategy="),
    ("training.init=lazy", "training.init="),
    ("data.val_shards=/no/such/shards", "data.val_shards="),
])
def test_invalid_configs_name_the_key(override, key, shards, tmp_path, capsys):
    args = ["train-vla", "experiment=vla_debug", f"data.train_shards={shards / 'train'}", "data.val_shards=null",
            f"output_dir={tmp_path / 'run'}", override]
    assert lapa_main(args) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # failed before writing anything


def test_resume_from_a_checkpoint_of_the_other_kind_is_refused(shards, tmp_path, capsys):
    (tmp_path / "run" / "checkpoints" / "step_00000004").mkdir(parents=True)  # a sharded run's DCP directory
    (tmp_path / "run" / "checkpoints" / "last").symlink_to("step_00000004")
    assert run(_cfg(shards, tmp_path / "run", "resume=auto", val=None)) == 2
    assert "is a sharded (DCP) checkpoint; continue it on several devices" in capsys.readouterr().err


def test_experiments_of_the_other_stage_are_refused(capsys):
    assert lapa_main(["train-vla", "experiment=laq_debug", "--cfg"]) == 2
    assert "Could not override 'model'" in capsys.readouterr().err
    assert lapa_main(["train-laq", "experiment=vla_debug", "--cfg"]) == 2
    assert "vla_model" in capsys.readouterr().err


def test_presets_compose():
    debug = load("train_vla", TrainVLAConfig, ["experiment=vla_debug"])
    assert debug.model.lm.name_or_path is None and debug.data.image_size == 64
    assert debug.cluster.resolved_precision() == "32-true" and debug.output_dir == "runs/vla_debug"
    one = load("train_vla", TrainVLAConfig, ["experiment=vla_1b"])
    assert one.training.accumulation(one.data.batch_size, 1) == 8 and one.cluster.precision == "bf16-mixed"
    full = load("train_vla", TrainVLAConfig, ["experiment=vla_7b"])
    c, t = full.cluster, full.training
    assert (c.num_nodes, c.devices, c.strategy, full.data.batch_size) == (4, 4, "fsdp", 16)
    assert t.global_batch_size == 4096 and t.accumulation(16, 16) == 16
    assert (t.optimizer.lr, t.optimizer.betas, t.optimizer.weight_decay) == (1e-5, [0.9, 0.95], 0.1)
    assert (t.scheduler.warmup_steps, t.scheduler.eta_min, t.gradient_clip_val) == (2000, 1e-6, 1.0)
    assert (t.checkpoint.every_n_steps, t.checkpoint.keep) == (1000, 5)
    assert full.model.lm.name_or_path == "meta-llama/Llama-2-7b-hf" and full.resume == "auto"
    with pytest.raises(ConfigError, match="training.global_batch_size"):
        load("train_vla", TrainVLAConfig, ["experiment=vla_7b", "data.batch_size=24"])


def test_activation_checkpointing_on_one_device_changes_no_number(shards, tmp_path):
    """`training.parallel.activation_checkpointing` also applies without sharding (recompute in backward):
    the same losses, and an export without the wrappers' names."""
    for ac in ("false", "true"):
        flag = f"training.parallel.activation_checkpointing={ac}"
        assert run(_cfg(shards, tmp_path / ac, "training.max_steps=3", flag, val=None)) == 0
    assert _train_losses(tmp_path / "false") == _train_losses(tmp_path / "true")
    assert VLA.from_pretrained(tmp_path / "true" / "export").config.head.num_outputs == 4


def test_sigterm_stops_with_a_checkpoint_and_a_nonzero_status(shards, tmp_path):
    """Slurm's time limit / preemption: SIGTERM stops the loop at a step boundary with a checkpoint and
    status 143 (not 0: a job script must not take it for a finished run); resume=auto then finishes."""
    from lapa.training.stop_signal import EXIT_STOPPED
    from stop_run import sigterm_when

    out = tmp_path / "run"
    args = ["experiment=vla_debug", *FAST, f"data.train_shards={shards / 'train'}", "data.val_shards=null",
            f"output_dir={out}", "training.checkpoint.every_n_steps=2"]
    status, printed = sigterm_when(["train-vla", *args, "training.max_steps=100000"],
                                   lambda: bool(step_checkpoints(out / "checkpoints")))
    assert status == EXIT_STOPPED, printed
    assert "stopped by SIGTERM" in printed and "resume=auto" in printed
    stopped = int(read_progress(out / "checkpoints" / "last.ckpt")["step"])
    assert not (out / "export").exists() and not (out / "summary.json").exists()
    # the stop saved the step it stopped at, which resume=auto continues to the end
    assert lapa_main(["train-vla", *args, f"training.max_steps={stopped + 2}", "resume=auto"]) == 0
    assert (out / "export" / "model.safetensors").exists()
