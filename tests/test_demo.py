"""`lapa demo` end to end at a very small setting (every stage, videos to closed-loop success), and its
resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lapa.config import ConfigError, load
from lapa.demo import DemoConfig

pytest.importorskip("pybullet")

STAGES = ["sim generate", "ingest train", "ingest val", "train-laq", "label", "eval-laq", "label val", "train-vla",
          "sim demos", "finetune lapa", "finetune scratch", "sim eval lapa", "sim eval scratch"]


def _demo(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "lapa.cli", "demo", f"output_dir={out}", "episodes=4", "val_fraction=0.5",
           "image_size=32", "demo_seed=2", "train_steps=3", "train_batch_size=4", "workers=0", "eval_max_pairs=40",
           "train_overrides=['training.val_check_interval=2','training.limit_val_batches=1']",
           "eval_overrides=['atlas_frames=1','grid_examples=2']", "vla_steps=3", "demo_episodes=4", "demos=2",
           "finetune_steps=3", "eval_episodes=1",
           "vla_overrides=['training.val_check_interval=0','training.checkpoint.every_n_steps=0']",
           "finetune_overrides=['training.val_check_interval=1000','training.checkpoint.every_n_steps=0']",
           "sim_eval_overrides=['max_steps=4','tasks=[pick,push]']"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    lines = _demo(out)
    report_dir = Path(lines[-1])  # the last line is the report's directory
    assert report_dir == (out / "report").resolve()
    for name in ("report.md", "metrics.json", "recon_grid.png", "code_usage.png", "atlas_0.png",
                 "demo_summary.json"):
        assert (report_dir / name).is_file(), name
    summary = json.loads((report_dir / "demo_summary.json").read_text())
    assert list(summary["timings_s"]) == STAGES
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["action"] is not None  # ingest got the simulator's sidecar: true actions exist
    assert 0 < metrics["pairs"] <= 40
    assert "## Demo pipeline" in (report_dir / "report.md").read_text()
    assert list((out / "latent" / "train").glob("latent-*.tar"))
    policy = summary["policy"]  # Stages 2 and 3 and the closed loop, both arms
    assert policy["stage2"]["steps"] == 3 and policy["stage2"]["model"]["samples"] > 0
    assert set(policy["arms"]) == {"lapa", "scratch"}
    for arm in policy["arms"].values():
        assert arm["success"]["episodes"] == 2 and 0 <= arm["nmse"] < 10
    text = (report_dir / "report.md").read_text()
    assert "## Stage 2" in text and "| lapa |" in text and "| scratch |" in text
    demos = json.loads((out / "finetune_lapa" / "export" / "info.json").read_text())["training"]["demos"]
    assert demos["episodes"] == 2 and all("-s2-" in i for i in demos["ids"])  # the demonstrations' own seed
    final = out / "laq" / "laq_final.pt"
    stamps = {p: p.stat().st_mtime_ns for p in (final, out / "vla" / "export" / "model.safetensors",
                                                 out / "finetune_scratch" / "export" / "model.safetensors",
                                                 out / "eval_lapa" / "metrics.json")}

    again = "\n".join(_demo(out))  # a re-run resumes: nothing is regenerated or retrained
    assert "skipping training" in again and "skipping Stage 2" in again and "skipping Stage 3 (lapa)" in again
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert "0 pairs labelled" in again


def test_demo_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="image_size=60"):
        load("demo", DemoConfig, ["image_size=60"])
    with pytest.raises(ConfigError, match="episodes=2"):
        load("demo", DemoConfig, ["episodes=2"])
    assert load("demo", DemoConfig).output_dir == "runs/demo"
