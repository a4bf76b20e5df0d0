"""GPU paths of the LAQ (skipped without CUDA): bf16 autocast training, the fused SDPA kernels against
the math kernel, torch.compile against eager, and a Lightning bf16-mixed run end to end.

Run on a GPU machine with `pytest -m gpu`. Tolerances: fp32 kernels agree to about 1e-5; bf16 keeps
~3 significant digits, so bf16 results are compared with the fp32 ones loosely (loss within 5 %).
"""

from __future__ import annotations

import json

import pytest
import torch
from laq_train_fixtures import PairDataModule, moving_square_pairs, tiny_model_config
from torch.nn.attention import SDPBackend, sdpa_kernel

from lapa.data.loader import DataConfig
from lapa.laq import LAQ, LAQConfig, load_model
from lapa.laq.optim import OptimizerConfig
from lapa.laq.task import CheckpointConfig, TrainingConfig
from lapa.laq.train import TrainLAQConfig, run
from lapa.training.cluster import ClusterConfig
from lapa.training.schedule import SchedulerConfig

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _model(seed: int = 0, **kw) -> LAQ:
    torch.manual_seed(seed)
    cfg = LAQConfig(**{**dict(image_size=64, patch_size=8, dim=128, quant_dim=16, spatial_depth=2,
                              temporal_depth=2, decoder_depth=2, heads=2, dim_head=64), **kw})
    return LAQ(cfg).to(CUDA)


def test_fused_sdpa_kernels_match_the_math_kernel_in_fp32():
    model = _model().eval()
    frames = torch.rand(4, 3, 2, 64, 64, device=CUDA)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            want = model(frames)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            got = model(frames)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.recon, want.recon, rtol=1e-4, atol=1e-5)


def test_gpu_matches_cpu_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = _model().eval()
    frames = torch.rand(2, 3, 2, 64, 64, device=CUDA)
    with torch.no_grad():
        gpu = model(frames)
        cpu = model.cpu()(frames.cpu())
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    torch.testing.assert_close(gpu.recon.cpu(), cpu.recon, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_step_is_finite_and_close_to_fp32():
    frames, _ = moving_square_pairs(8, seed=3)
    frames = frames.to(CUDA)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(seed=1).train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            torch.manual_seed(7)  # the same noise substitution in both runs
            out = model(frames)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert model.vq.codebooks.grad is not None and model.vq.codebooks.grad.abs().sum() > 0
        losses[dtype] = float(out.loss)
    assert abs(losses[torch.bfloat16] - losses[torch.float32]) < 0.05 * losses[torch.float32]


def test_compiled_model_matches_eager():
    model = _model().eval()
    frames = torch.rand(4, 3, 2, 64, 64, device=CUDA)
    compiled = torch.compile(model)
    with torch.no_grad():
        want, got = model(frames), compiled(frames)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.recon, want.recon, rtol=1e-3, atol=1e-4)


def test_lightning_bf16_mixed_compiled_run_on_gpu(tmp_path):
    frames, _ = moving_square_pairs(64, seed=5)
    training = TrainingConfig(
        optimizer=OptimizerConfig(lr=2e-3), scheduler=SchedulerConfig(warmup_steps=5, total_steps=60),
        max_steps=60, val_check_interval=30, limit_val_batches=2, log_every_n_steps=5, num_vis_rows=2,
        compile=True,  # as laq_full: the compiled model in place, checkpoint keys unchanged
        checkpoint=CheckpointConfig(every_n_steps=30, keep_periodic=2))
    cfg = TrainLAQConfig(model=tiny_model_config(), data=DataConfig(image_size=64), training=training,
                         cluster=ClusterConfig(accelerator="gpu", precision="auto"),
                         output_dir=str(tmp_path / "run"), experiment_name="gpu_test")
    assert cfg.cluster.resolved_precision() == "bf16-mixed"
    assert run(cfg, PairDataModule(frames, frames[:16], batch_size=16)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final = summary["final_val"]
    assert summary["steps"] == 60 and final["psnr"] > final["psnr_copy"] - 3  # trains, no NaN
    model = load_model(tmp_path / "run" / "laq_final.pt")
    assert model.quantize(frames[:4]).shape == (4, 4)
