"""`lapa finetune` (Stage 3) on one CPU process: the head swap keeps the Stage 2 weights, scratch and
Stage 2 inits overfit a few demonstrations with the vision frozen, LoRA trains only adapters and merges
exactly, a killed run resumes exactly, action chunks, the export reloads as a policy, and bad configs
name their key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.config import ConfigError, load
from lapa.data.loader import DataConfig, eval_loader
from lapa.data.robot_steps import ROBOT_STEPS
from lapa.vla import VLA, load_vla_config
from lapa.vla.action_tokenizer import ActionTokenizer
from lapa.vla.finetune import (
    ActionFinetuneTask,
    EpisodeActions,
    build_finetune_model,
    merge_lora,
    prepare,
    run,
)
from lapa.vla.finetune_config import FinetuneConfig, LoRAConfig
from robot_shards import make_robot_shards

FAST = ["experiment=finetune_debug", "data.batch_size=8", "data.shuffle_buffer=16", "training.log_every_n_steps=1",
        "training.scheduler.warmup_steps=3", "training.optimizer.lr=3e-3", "training.checkpoint.every_n_steps=0"]
LN256 = float(np.log(256))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demos")
    make_robot_shards(root / "train", [(0, 0), (1, 1), (2, 0), (3, 1)])  # 4 episodes x 8 steps
    make_robot_shards(root / "val", [(0, 0), (3, 1)], prefix="val", seed=1)  # held-out episodes
    return root


@pytest.fixture(scope="module")
def stage2(tmp_path_factory) -> Path:
    """A Stage 2 export of the debug VLA (4 ACT queries, latent head 8 classes)."""
    torch.manual_seed(0)
    model = VLA(load_vla_config("vla_debug"))
    with torch.no_grad():
        model.act_queries.normal_()  # distinct rows: the kept one must be row 0
    return model.save_pretrained(tmp_path_factory.mktemp("stage2") / "export", info={"training": {"steps": 0}})


def _cfg(data: Path, out: Path, *extra: str, val: bool = True) -> FinetuneConfig:
    return load("finetune", FinetuneConfig, [*FAST, f"data.train_shards={data / 'train'}",
                                             f"data.val_shards={data / 'val'}" if val else "data.val_shards=null",
                                             f"output_dir={out}", *extra])


def _export_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_head_swap_keeps_every_other_stage2_weight(data, stage2, tmp_path):
    before = _export_state(stage2)
    model, source = build_finetune_model(_cfg(data, tmp_path, f"init={stage2}"))
    after = model.state_dict()
    assert model.config.stage == 3 and source["init"] == str(stage2)
    assert model.config.head.num_queries == 1 and model.config.head.outputs_per_query == 7
    assert after["head.proj.weight"].shape == (7 * 256, 128)
    assert torch.equal(after["act_queries"], before["act_queries"][:1])
    kept = [k for k in before if not k.startswith("head.") and k != "act_queries"]
    assert kept and set(kept) == {k for k in after if not k.startswith("head.") and k != "act_queries"}
    for key in kept:
        assert torch.equal(after[key], before[key]), key
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.lm.parameters())


@pytest.mark.parametrize("init", ["scratch", "stage2"])
def test_overfits_a_few_demonstrations_and_exports_a_policy(init, data, stage2, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(data, out, f"init={'scratch' if init == 'scratch' else stage2}", "training.max_steps=30",
               "training.val_check_interval=1000")
    initial, _ = build_finetune_model(cfg)
    vision = {k: v.clone() for k, v in initial.vision.state_dict().items()}
    assert run(cfg) == 0
    summary = json.loads((out / "summary.json").read_text())
    val = summary["final_val"]
    assert val["loss"] < 0.25 * LN256 and val["acc"] > 0.7, val  # from ln 256 = 5.5 and accuracy ~0
    assert val["nmse"] < 0.05 < val["nmse_mean_action"]
    assert (out / "pictures" / "val_step_00000030.png").is_file()
    assert summary["demos"]["episodes"] == 4 and summary["demos"]["steps"] == 32
    # the export: the policy reloads on its own and predicts actions; the vision tower never moved
    model = VLA.from_pretrained(out / "export")
    tok = ActionTokenizer.load(out / "export")
    assert tok.to_dict() == ActionTokenizer.load(out).to_dict()
    for key, value in model.vision.state_dict().items():
        assert torch.equal(value, vision[key]), key
    info = json.loads((out / "export" / "info.json").read_text())
    assert info["stage"] == 3 and info["training"]["steps"] == 30 and info["training"]["init"] == (
        "scratch" if init == "scratch" else str(stage2))
    batch = next(iter(eval_loader(DataConfig(train_shards=str(data / "train"), val_shards=str(data / "val"),
                                             batch_size=8, num_workers=0, image_size=64), ROBOT_STEPS)))
    task = ActionFinetuneTask(model, tok)
    actions = task.predict_actions(batch["image"], batch["text"])[:, 0]  # [B, 7]
    assert actions.shape == (8, 7) and actions.dtype == torch.float32
    assert float(tok.normalized_mse(actions, batch["actions"]).mean()) < 0.05


def test_lora_trains_only_adapters_and_merges_exactly(data, tmp_path):
    cfg = _cfg(data, tmp_path, "lora.enabled=true", "lora.rank=4")
    ready = prepare(cfg)
    model, tok = ready["model"], ready["tokenizer"]
    lora = [n for n, p in model.lm.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad == ("lora_" in n) for n, p in model.lm.named_parameters())
    assert model.head.proj.weight.requires_grad and model.act_queries.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = ActionFinetuneTask(model, tok)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = next(iter(eval_loader(cfg.data, ROBOT_STEPS, shards=cfg.data.train_shards)))
    for _ in range(3):
        loss = model.loss(task(batch["image"], batch["text"]), tok.encode(batch["actions"]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        if name.startswith("lm.") and "lora_" not in name or name.startswith("vision."):
            assert not moved, name  # every non-adapter LM weight and the vision tower unchanged
        elif "lora_B" in name:
            assert moved, name
    model.eval()
    with torch.no_grad():
        adapted = task(batch["image"], batch["text"])
        merge_lora(model)
        assert not any("lora_" in n for n, _ in model.named_parameters())
        torch.testing.assert_close(task(batch["image"], batch["text"]), adapted, atol=1e-5, rtol=1e-5)
        reloaded = VLA.from_pretrained(model.save_pretrained(tmp_path / "export"))
        torch.testing.assert_close(ActionFinetuneTask(reloaded, tok)(batch["image"], batch["text"]), adapted,
                                   atol=1e-5, rtol=1e-5)


def test_lora_run_exports_a_merged_model(data, tmp_path):
    out = tmp_path / "run"
    assert run(_cfg(data, out, "lora.enabled=true", "lora.target_modules=[all-linear]", "training.max_steps=3",
                    "training.val_check_interval=1000")) == 0
    model = VLA.from_pretrained(out / "export")
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert json.loads((out / "export" / "info.json").read_text())["training"]["lora"]["enabled"] is True


def test_resume_equals_uninterrupted(data, tmp_path):
    common = ["training.scheduler.total_steps=6", "training.val_check_interval=3",
              "training.checkpoint.every_n_steps=3",
              "data.max_episodes=3"]  # 24 steps: 3 batches per epoch, so the split falls on an epoch end
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run(_cfg(data, whole, *common, "training.max_steps=6")) == 0
    assert run(_cfg(data, split, *common, "training.max_steps=3")) == 0
    assert run(_cfg(data, split, *common, "training.max_steps=6", "resume=auto")) == 0
    a, b = _export_state(whole / "export"), _export_state(split / "export")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert json.loads((split / "summary.json").read_text())["steps_this_run"] == 3


def test_action_chunks(data, tmp_path):
    table = EpisodeActions(data / "train")
    chunk = table.chunks(["ep001", "ep001"], [0, 6], 3)  # [2, 3, 7]; step 6 of 8: 6, 7, 7 (padded)
    assert chunk.shape == (2, 3, 7)
    assert np.allclose(chunk[0, :, 2], [0.02 + 0.000, 0.02 + 0.001, 0.02 + 0.002])
    assert np.allclose(chunk[1, :, 2], [0.02 + 0.006, 0.02 + 0.007, 0.02 + 0.007])
    out = tmp_path / "run"
    assert run(_cfg(data, out, "action_chunk=2", "training.max_steps=2", "training.val_check_interval=1000")) == 0
    model = VLA.from_pretrained(out / "export")
    assert model.config.head.outputs_per_query == 14
    assert "nmse_step0" in json.loads((out / "summary.json").read_text())["final_val"]


def test_bad_configs_name_the_key(data, stage2, tmp_path, capsys):
    with pytest.raises(ConfigError, match="init="):
        _cfg(data, tmp_path, f"init={tmp_path / 'missing'}").check_inputs()
    with pytest.raises(ConfigError, match="not a Stage 2 export"):
        _cfg(data, tmp_path, f"init={data}").check_inputs()
    stage3 = tmp_path / "s3"
    model, _ = build_finetune_model(_cfg(data, tmp_path))
    model.save_pretrained(stage3)
    with pytest.raises(ConfigError, match="stage 3 export"):
        _cfg(data, tmp_path, f"init={stage3}").check_inputs()
    assert run(_cfg(data, tmp_path / "many", "data.max_episodes=9")) == 2
    assert "data.max_episodes=9: the shards hold only 4 episodes" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="action_chunk"):
        _cfg(data, tmp_path, "action_chunk=0")
    with pytest.raises(ConfigError, match="lora.rank"):
        LoRAConfig(rank=0)
