"""`lapa eval-laq`: the metrics' logic on constructed data, and a tiny end-to-end run with its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.config import ConfigError, load
from lapa.eval.laq_eval import EvalLAQConfig, atlas, compute_metrics, run
from pair_shards import make_pair_shards


def _cfg(*overrides: str) -> EvalLAQConfig:
    return load("eval_laq", EvalLAQConfig, ["checkpoint=c", "shards=s", "output_dir=o", *overrides])


def _collected(indices: np.ndarray, actions: np.ndarray | None, mse=0.001, copy=0.01, rand=0.004) -> dict:
    n = len(indices)
    return {"indices": indices, "actions": actions, "mse_recon": np.full(n, mse),
            "mse_copy": np.full(n, copy), "mse_random": np.full(n, rand)}


def test_latents_that_encode_the_action_score_high() -> None:
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(900, 7)).astype(np.float32)
    cfg = _cfg("action_dims=[0]", "action_bins=3")
    from lapa.eval.metrics import discretize_actions

    cls = discretize_actions(actions, [0], 3)
    # Position 0 holds the action class, the other positions are a little noise.
    indices = np.concatenate([cls[:, None], rng.integers(0, 2, size=(900, 3))], axis=1)
    m = compute_metrics(_collected(indices, actions), 8, cfg)
    act = m["action"]
    assert act["nmi_per_position"][0] == pytest.approx(1.0)
    assert act["probe_accuracy"] == pytest.approx(1.0)
    assert abs(act["probe_accuracy_shuffled"] - 1 / 3) < 0.08
    # I = H(class) = log 3; H(latent) = log 3 + 3 log 2 -> NMI = 2 log 3 / (2 log 3 + 3 log 2).
    assert act["nmi"] == pytest.approx(2 * np.log(3) / (2 * np.log(3) + 3 * np.log(2)), abs=0.01)
    assert act["nmi_shuffled"] < 0.03 and act["nmi_adjusted"] > 0.45
    # Terciles of a Gaussian explain ~79% of its variance; the other 6 dimensions are unpredictable.
    assert act["ridge_r2_per_dim"][0] == pytest.approx(0.79, abs=0.06)
    assert max(abs(v) for v in act["ridge_r2_per_dim"][1:]) < 0.05
    assert act["ridge_r2"] > act["ridge_r2_shuffled"] + 0.05
    assert m["reconstruction"]["psnr"] == pytest.approx(30.0)
    assert m["reconstruction"]["copy_psnr"] == pytest.approx(20.0)
    assert m["controllability"]["delta_psnr"] == pytest.approx(10 * np.log10(4))
    assert m["verdict"] == {"beats_copy_baseline": True, "controllable": True,
                            "latents_carry_action_information": True, "min_margin": 0.05,
                            "min_delta_psnr": 0.1}
    assert sum(m["codebook"]["code_histogram"][0]) == 900
    assert m["codebook"]["utilisation_per_position"] == pytest.approx([3 / 8, 2 / 8, 2 / 8, 2 / 8])


def test_latents_unrelated_to_the_action_are_flagged() -> None:
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 8, size=(600, 4))
    m = compute_metrics(_collected(indices, rng.normal(size=(600, 7)), mse=0.02, copy=0.01, rand=0.02),
                        8, _cfg())
    assert m["verdict"]["beats_copy_baseline"] is False
    assert m["verdict"]["controllable"] is False
    assert m["verdict"]["latents_carry_action_information"] is False
    assert m["action"]["probe_accuracy"] < 0.15  # 27 tercile classes: chance is about 1/27
    assert compute_metrics(_collected(indices, None), 8, _cfg())["action"] is None


def test_atlas_varies_one_position_at_a_time() -> None:
    class Recorder(torch.nn.Module):
        def decode(self, first, indices):
            self.seen = indices.clone()
            return first * 0 + indices[:, :1, None, None].float() / 10  # [B, 3, H, W]

    model = Recorder()
    grid = atlas(model, torch.rand(3, 8, 8), torch.tensor([1, 2, 3, 4]), 5, torch.device("cpu"))
    assert grid.shape == (4, 5, 3, 8, 8)
    seen = model.seen.reshape(4, 5, 4)
    for p in range(4):
        for k in range(5):
            expected = [1, 2, 3, 4]
            expected[p] = k
            assert seen[p, k].tolist() == expected


def test_end_to_end_report(tmp_path: Path, laq_checkpoint: Path) -> None:
    make_pair_shards(tmp_path / "val", num_shards=2, pairs_per_shard=12)
    out = tmp_path / "eval"
    cfg = load("eval_laq", EvalLAQConfig, [f"checkpoint={laq_checkpoint}", f"shards={tmp_path / 'val'}",
                                           f"output_dir={out}", "batch_size=5", "num_workers=0",
                                           "device=cpu", "max_pairs=20", "grid_examples=3", "atlas_frames=2"])
    assert run(cfg) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"pairs", "reconstruction", "controllability", "codebook", "action", "verdict"}
    assert metrics["pairs"] == 20  # max_pairs cuts the third batch
    assert set(metrics["action"]) >= {"nmi", "nmi_shuffled", "probe_accuracy", "probe_accuracy_shuffled",
                                      "ridge_r2", "ridge_r2_shuffled"}
    assert 0.0 <= metrics["action"]["nmi"] <= 1.0
    assert sum(metrics["codebook"]["code_histogram"][0]) == 20
    assert np.isfinite(metrics["reconstruction"]["psnr"]) and metrics["reconstruction"]["copy_psnr"] > 5
    for name in ("report.md", "recon_grid.png", "code_usage.png", "atlas_0.png", "atlas_1.png",
                 "atlas_1_change.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "atlas_2.png").exists()
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "![atlas 1](atlas_1.png)" in report and "shuffled" in report
    from PIL import Image

    with Image.open(out / "atlas_0.png") as img:  # 4 rows x (2 + 8) columns of upscaled frames
        assert img.width > 10 * 96 and img.height > 4 * 96


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="action_dims"):
        _cfg("action_dims=[9]")
    with pytest.raises(ConfigError, match="probe_train_fraction=1.0"):
        _cfg("probe_train_fraction=1.0")
    with pytest.raises(ConfigError, match="missing value for checkpoint"):
        load("eval_laq", EvalLAQConfig, ["shards=s", "output_dir=o"])


def test_code_usage_chart_has_a_y_axis():
    """The bars are read against a y-axis in percent of the pairs (0% .. the tallest bar's share)."""
    from lapa.eval.report import usage_chart
    from lapa.pictures import INK, LABEL_H

    counts = np.array([[30, 10, 0, 0, 0, 0, 0, 0], [5, 5, 5, 5, 5, 5, 5, 5]])
    img = np.asarray(usage_chart(counts, height=110))
    axis = img[LABEL_H:LABEL_H + 110, 40]  # the axis column, over the bars' height
    assert (axis == INK).all()
    assert (img[:, :36] != 255).any()  # tick labels (0%, 38%, 75%) left of the axis
