"""`lapa experiment` in miniature (2 demonstrations, 2 evaluation episodes per policy): the plumbing of every
arm, the control labels, the report, and resume. The result itself is not checked here (too small)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lapa.config import ConfigError, load
from lapa.experiment.config import ExperimentConfig
from lapa.experiment.relabel import bin_actions, fit_bins
from lapa.laq.label import read_labels

pytest.importorskip("pybullet")

# seeds whose few episodes all succeed (the oracle fails ~2% of the time; a failed episode is no demonstration)
TINY = ["seed=2", "demo_seed=3", "video_episodes=4", "image_size=32", "laq_steps=3", "vla_steps=3", "demo_pool=6",
        "ns=[2]",
        "arms=[scratch,lapa,actions,shuffled]", "train_seeds=[0]", "finetune_steps=3", "eval_episodes=1", "workers=0",
        "laq_overrides=['training.val_check_interval=2','training.limit_val_batches=1','data.batch_size=4']",
        "vla_overrides=['training.val_check_interval=0','training.checkpoint.every_n_steps=0']",
        "finetune_overrides=['training.val_check_interval=1000','training.checkpoint.every_n_steps=0']",
        "sim_eval_overrides=['max_steps=4','tasks=[pick,push]']"]


def _experiment(out: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lapa.cli", "experiment", f"output_dir={out}", *TINY],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_every_arm_runs_reports_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    stdout = _experiment(out)
    report = Path(stdout.strip().splitlines()[-1])
    assert report == (out / "experiment").resolve()
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["cells"]) == {"scratch/2", "lapa/2", "actions/2", "shuffled/2"}
    for cell in metrics["cells"].values():
        assert cell["pooled"][1] == 2 and 0 <= cell["mean_success"] <= 1  # 1 episode x 2 families
    assert set(metrics["stage2"]) == {"lapa", "actions", "shuffled"}
    assert (report / "success_vs_n.png").is_file() and "| lapa | 2 |" in (report / "report.md").read_text()
    # the same N demonstrations for every arm; scenes disjoint from the videos
    ids = {arm: json.loads((out / "runs" / f"{arm}_n2_s0" / "export" / "info.json").read_text())
           ["training"]["demos"]["ids"] for arm in ("scratch", "lapa", "actions")}
    assert ids["scratch"] == ids["lapa"] == ids["actions"] and all("-s3-" in i for i in ids["lapa"])
    # the control labels: same pairs, other labels
    latent = np.concatenate([read_labels(p) for p in sorted((out / "latent" / "train").glob("*.tar"))])
    shuffled = np.concatenate([read_labels(p) for p in sorted((out / "labels_shuffled" / "train").glob("*.tar"))])
    assert sorted(map(tuple, latent)) == sorted(map(tuple, shuffled))  # a permutation of the same labels
    actions = np.concatenate([read_labels(p) for p in sorted((out / "labels_actions" / "train").glob("*.tar"))])
    assert actions.shape == latent.shape and actions.max() <= 7

    stamp = (out / "runs" / "lapa_n2_s0" / "export" / "model.safetensors").stat().st_mtime_ns
    again = _experiment(out)  # resumes: nothing retrained or re-evaluated
    assert "keeping the finetuning lapa_n2_s0" in again and "keeping the evaluation of lapa_n2_s0" in again
    assert (out / "runs" / "lapa_n2_s0" / "export" / "model.safetensors").stat().st_mtime_ns == stamp


def test_action_bins_are_equal_frequency() -> None:
    x = np.random.default_rng(0).normal(size=(800, 2))
    x[:, 1] = np.sign(x[:, 1])  # a binary dimension: two bins, not eight
    bins = bin_actions(x, fit_bins(x, 8))
    assert np.bincount(bins[:, 0]).tolist() == [100] * 8
    assert len(np.unique(bins[:, 1])) == 2


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="arms"):
        load("lapa_experiment", ExperimentConfig, ["arms=[scratch,latent]"])
    with pytest.raises(ConfigError, match="demo_pool"):
        load("lapa_experiment", ExperimentConfig, ["ns=[50]", "demo_pool=40"])
    cfg = load("lapa_experiment", ExperimentConfig)
    assert len(cfg.runs()) == 3 * 2 * 3 and cfg.runs()[0] == ("scratch", 10, 0)
