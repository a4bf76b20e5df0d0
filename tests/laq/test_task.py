"""LAQTask: overfitting, metrics, optimiser/schedule, checkpoints and the checkpoint helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from laq_train_fixtures import PairDataModule, moving_square_pairs, tiny_model_config
from PIL import Image

from lapa.config import ConfigError
from lapa.laq import load_model
from lapa.laq.callbacks import make_grid
from lapa.laq.metrics import psnr_from_mse
from lapa.laq.optim import OptimizerConfig, build_optimizer, parameter_groups
from lapa.laq.task import PSNR_MIN_MSE, CheckpointConfig, LAQTask, TrainingConfig
from lapa.pictures import save_png
from lapa.training.schedule import SchedulerConfig, lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(max_steps: int, **kw) -> L.Trainer:
    kw = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "num_sanity_val_steps": 0, "accelerator": "cpu",
          "gradient_clip_val": 1.0, "check_val_every_n_epoch": 10_000, **kw}
    return L.Trainer(max_steps=max_steps, **kw)


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_overfits_a_handful_of_pairs_and_beats_copy_baseline():
    L.seed_everything(0, verbose=False)
    frames, _ = moving_square_pairs(8, seed=1)
    data = PairDataModule(frames, batch_size=8)
    training = TrainingConfig(optimizer=OptimizerConfig(lr=3e-3),
                              scheduler=SchedulerConfig(warmup_steps=10), max_steps=150)
    task = LAQTask(tiny_model_config(), training)
    trainer = _trainer(150)
    trainer.validate(task, datamodule=data, verbose=False)
    before = _metrics(trainer)
    trainer.fit(task, datamodule=data)
    train = _metrics(trainer)
    trainer.validate(task, datamodule=data, verbose=False)
    after = _metrics(trainer)

    # Copy baseline of these pairs: the square (12x12) moves 6 px -> ~18 dB; it must not change.
    assert after["val/psnr_copy"] == pytest.approx(before["val/psnr_copy"])
    assert 15.0 < after["val/psnr_copy"] < 22.0
    assert after["val/loss_recon"] < 0.045 and after["val/loss_recon"] < 0.25 * before["val/loss_recon"]
    assert after["val/psnr"] > after["val/psnr_copy"] + 1.5
    assert after["val/psnr"] > before["val/psnr"] + 8.0
    assert 1.0 <= after["val/perplexity"] <= 8.0
    assert after["val/codebook_utilization"] >= 2 / 8
    for key in ("train/loss_recon", "train/psnr", "train/psnr_copy", "train/perplexity",
                "train/codebook_utilization"):
        assert math.isfinite(train[key])
    assert train["train/loss_recon"] < 0.06

    indices = task.predict_step({"frames": frames}, 0)
    assert indices.shape == (8, 4) and indices.dtype == torch.long
    assert int(indices.min()) >= 0 and int(indices.max()) < 8


def test_validation_metrics_follow_their_definitions():
    L.seed_everything(0, verbose=False)
    frames, _ = moving_square_pairs(6, seed=2)
    task = LAQTask(tiny_model_config(), TrainingConfig(max_steps=1))
    trainer = _trainer(1)
    trainer.validate(task, datamodule=PairDataModule(frames, batch_size=4), verbose=False)  # 2 batches
    got = _metrics(trainer)

    model = task.model.eval()
    with torch.no_grad():
        recon = model.reconstruct(frames).clamp(0, 1)
        codes = model.quantize(frames)
        loss = sum(float(model(frames[s]).loss) * len(frames[s]) for s in (slice(0, 4), slice(4, 6))) / 6
    target = frames[:, :, 1]
    expected_psnr = 10 * math.log10(1 / float((recon - target).pow(2).mean()))
    expected_copy = 10 * math.log10(1 / float((frames[:, :, 0] - target).pow(2).mean()))
    assert got["val/psnr"] == pytest.approx(expected_psnr, abs=1e-3)
    assert got["val/psnr_copy"] == pytest.approx(expected_copy, abs=1e-3)
    assert got["val/loss_recon"] == pytest.approx(loss, rel=1e-4)
    assert got["val/codebook_utilization"] == pytest.approx(len(torch.unique(codes)) / 8)
    assert float(psnr_from_mse(torch.tensor(0.0), min_mse=PSNR_MIN_MSE)) == pytest.approx(100.0)


def test_lightning_checkpoint_round_trips_through_load_model(tmp_path):
    L.seed_everything(0, verbose=False)
    frames, _ = moving_square_pairs(8, seed=3)
    task = LAQTask(tiny_model_config(), TrainingConfig(max_steps=3))
    trainer = _trainer(3)
    trainer.fit(task, datamodule=PairDataModule(frames, batch_size=4))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["hyper_parameters"]) == {"model", "training"}
    assert raw["hyper_parameters"]["model"]["dim"] == 64
    assert all(k.startswith("model.") for k in raw["state_dict"])

    loaded = load_model(path)
    assert not loaded.training
    task.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.reconstruct(frames), task.model.reconstruct(frames),
                                   rtol=0, atol=0)
        assert torch.equal(loaded.quantize(frames), task.model.quantize(frames))
    again = LAQTask.load_from_checkpoint(path)
    assert again.training_cfg == task.training_cfg and again.model_cfg == task.model_cfg


def test_lr_schedule_warmup_cosine_and_constant():
    cos = SchedulerConfig(name="cosine", warmup_steps=10, eta_min=1e-6)
    lr = 1e-4
    assert lr_factor(0, cos, 110, lr) == pytest.approx(0.1)
    assert lr_factor(9, cos, 110, lr) == pytest.approx(1.0)
    assert lr_factor(10, cos, 110, lr) == pytest.approx(1.0)
    assert lr_factor(60, cos, 110, lr) * lr == pytest.approx((lr + 1e-6) / 2)
    assert lr_factor(110, cos, 110, lr) * lr == pytest.approx(1e-6)
    assert lr_factor(500, cos, 110, lr) * lr == pytest.approx(1e-6)
    const = SchedulerConfig(name="constant", warmup_steps=0)
    assert lr_factor(0, const, 10, lr) == lr_factor(10_000, const, 10, lr) == 1.0


def test_optimizer_groups_and_recipes():
    model = LAQTask(tiny_model_config(), TrainingConfig()).model
    groups = parameter_groups(model, 0.01)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.01
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable
    spec = build_optimizer(model, OptimizerConfig())
    assert isinstance(spec, torch.optim.AdamW) and spec.defaults["betas"] == (0.9, 0.999)
    assert spec.defaults["foreach"] is True
    ref = build_optimizer(model, OptimizerConfig(name="adam", betas=[0.9, 0.99], weight_decay=0.0))
    assert type(ref) is torch.optim.Adam and ref.defaults["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("build, key", [
    (lambda: TrainingConfig(max_steps=-1, max_epochs=-1), "training.max_steps"),
    (lambda: TrainingConfig(val_check_interval=1.5), "training.val_check_interval"),
    (lambda: TrainingConfig(gradient_clip_algorithm="l1"), "training.gradient_clip_algorithm"),
    (lambda: OptimizerConfig(name="sgd"), "training.optimizer.name"),
    (lambda: OptimizerConfig(betas=[0.9]), "training.optimizer.betas"),
    (lambda: SchedulerConfig(warmup_steps=100, total_steps=50), "training.scheduler.total_steps"),
    (lambda: CheckpointConfig(keep_periodic=0), "training.checkpoint.keep_periodic"),
])
def test_training_config_errors_name_the_key(build, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        build()


def test_reconstruction_grid_layout(tmp_path):
    frames = torch.zeros(2, 3, 2, 8, 8)
    frames[:, :, 1] = 1.0
    recon = torch.full((2, 3, 8, 8), 2.0)  # out of range: clamped to white
    grid = make_grid(frames, recon, pad=2)
    assert grid.shape == (3, 2 * 10 + 2, 3 * 10 + 2) and grid.dtype == torch.uint8
    assert int(grid[:, 2:10, 2:10].max()) == 0  # frame t of row 0: black
    assert int(grid[:, 2:10, 12:20].min()) == 255  # frame t+1
    assert int(grid[:, 12:20, 22:30].min()) == 255  # reconstruction of row 1
    save_png(grid, tmp_path / "g.png")
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (22, 32, 3)


def test_reconstruction_grid_writes_png_and_sends_to_tensorboard(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lapa.laq.callbacks import ReconstructionGrid

    tb = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    sent = []
    monkeypatch.setattr(type(tb.experiment), "add_image",
                        lambda self, tag, img, global_step=None: sent.append((tag, tuple(img.shape), global_step)))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=7,
                              loggers=[tb, CSVLogger(save_dir=str(tmp_path))])
    frames, _ = moving_square_pairs(5, seed=4)
    cb = ReconstructionGrid(tmp_path / "recon", rows=3)
    outputs = {"frames": frames, "recon": frames[:, :, 1]}
    cb.on_validation_batch_end(trainer, None, outputs, None, batch_idx=1)  # type: ignore[arg-type]
    assert not (tmp_path / "recon").exists()  # only the first batch is drawn
    cb.on_validation_batch_end(trainer, None, outputs, None, batch_idx=0)  # type: ignore[arg-type]
    assert cb.last_path == tmp_path / "recon" / "step_00000007.png"
    assert np.asarray(Image.open(cb.last_path)).shape == (3 * 66 + 2, 3 * 66 + 2, 3)
    assert sent == [("val/reconstructions", (3, 3 * 66 + 2, 3 * 66 + 2), 7)]


def test_gradient_clipping_works_with_a_fused_optimizer_under_bf16_mixed(monkeypatch):
    """Lightning's mixed-precision plugin refuses to clip for a fused optimiser (found on an H100 with
    bf16-mixed, where build_optimizer picks the fused AdamW); LAQTask clips itself when nothing is scaled.
    Reproduced on CPU, where bf16-mixed autocast and fused AdamW also exist."""
    import lapa.laq.task as task_module

    norms = []

    class RecordingAdamW(torch.optim.AdamW):  # the gradient norm that the step sees (after clipping)
        def step(self, closure=None):
            loss = closure() if closure is not None else None
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            super().step()
            return loss

    monkeypatch.setattr(task_module, "build_optimizer",
                        lambda model, cfg: RecordingAdamW(model.parameters(), lr=cfg.lr, fused=True))
    frames, _ = moving_square_pairs(8, seed=1)
    task = LAQTask(tiny_model_config(), TrainingConfig(max_steps=2))
    trainer = _trainer(2, precision="bf16-mixed", gradient_clip_val=1e-3)
    trainer.fit(task, datamodule=PairDataModule(frames, batch_size=4))
    assert trainer.global_step == 2 and len(norms) == 2
    assert all(n <= 1e-3 * 1.01 for n in norms)  # clipped (unclipped norms are far above 1e-3)


def test_position_bias_reaches_attention_with_a_unit_stride_last_dimension(monkeypatch):
    """The fused GPU attention kernels (memory-efficient, cuDNN) refuse a mask whose last dimension is
    strided and fall back to the slow math kernel (found on an H100): every mask must have stride 1."""
    import torch.nn.functional as F

    strides = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            strides.append(attn_mask.stride(-1))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    task = LAQTask(tiny_model_config(heads=2), TrainingConfig())
    frames, _ = moving_square_pairs(2, seed=1)
    with torch.no_grad():
        task.model(frames)
    assert strides and set(strides) == {1}


def test_gradient_accumulation_advances_the_nsvq_schedule_per_optimizer_step():
    frames, _ = moving_square_pairs(12, seed=2)
    task = LAQTask(tiny_model_config(), TrainingConfig(max_steps=3))
    trainer = _trainer(3, accumulate_grad_batches=2)
    trainer.fit(task, datamodule=PairDataModule(frames, batch_size=2))  # 6 batches: 3 optimiser steps
    assert trainer.global_step == 3 and int(task.model.vq.step) == 3
