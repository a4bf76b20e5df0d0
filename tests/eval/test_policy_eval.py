"""`lapa sim eval policy=<Stage 3 export>`: a LAPAPolicy runs closed loop through the registry, the report
shows successes and failures with pictures, and evaluation seeds that a policy was trained on are refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pybullet")

from lapa.cli import main  # noqa: E402
from lapa.eval.policy_report import choose_videos  # noqa: E402
from lapa.sim.generate import episode_seed, seed_of_episode_id  # noqa: E402
from policy_exports import make_policy_export  # noqa: E402

SMALL = ["sim.image_size=32", "workers=0", "tasks=[pick,push]", "episodes=2", "max_steps=6", "videos_per_task=1"]


def test_a_stage3_export_runs_closed_loop_and_writes_its_report(tmp_path, one_thread):
    export = make_policy_export(tmp_path / "export", chunk=2)
    out = tmp_path / "eval"
    assert main(["sim", "eval", f"policy={export}", f"output={out}", *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["episodes"] == 4 and metrics["seeds"] == [1_000_000, 1_000_001]
    report = (out / "report.md").read_text()
    assert "| **overall** |" in report and '"action_chunk": 2' in report  # the table and the policy's info
    kept = [ep for ep in metrics["episodes"] if ep["video"]]
    assert kept and all((out / ep["video"]).is_file() and (out / ep["filmstrip"]).is_file() for ep in kept)
    assert all(f"]({ep['filmstrip']})" in report for ep in kept)
    assert [p.name for p in (out / "videos").glob("*.gif")] == [kept[0]["gif"].split("/")[-1]]
    # the unkept episodes left nothing behind
    assert len(list((out / "videos").glob("*.mp4"))) == len(kept)


def test_choose_videos_keeps_first_successes_and_failures_per_family():
    eps = [{"family": f, "index": i, "success": s} for f in ("pick", "push")
           for i, s in enumerate([False, True, False, True, True])]
    keep = choose_videos(eps, 1)
    assert sorted((eps[j]["family"], eps[j]["index"]) for j in keep) == [
        ("pick", 0), ("pick", 1), ("push", 0), ("push", 1)]
    assert len(choose_videos(eps, 2)) == 8


def test_seeds_the_policy_was_trained_on_are_refused(tmp_path, capsys):
    export = make_policy_export(tmp_path / "export")
    info = json.loads((export / "info.json").read_text())
    trained = "ep000007-s10-pick"  # world seed 10 * 100003 + 7 = 1,000,037
    assert seed_of_episode_id(trained) == episode_seed(10, 7) == 1_000_037 and seed_of_episode_id("other") is None
    info["training"]["demos"] = {"ids": ["ep000001-s0-push", trained]}
    (export / "info.json").write_text(json.dumps(info))
    args = ["sim", "eval", f"policy={export}", f"output={tmp_path / 'eval'}", *SMALL]
    assert main([*args, "seed=1000030", "episodes=10"]) == 2
    assert "include 1 seed(s) the policy was trained on (e.g. 1000037" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()
