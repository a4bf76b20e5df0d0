"""`lapa sim eval` (lapa.eval.closed_loop) through the CLI: results, videos, and how a policy name resolves."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

import av  # noqa: E402

from lapa.cli import main  # noqa: E402
from lapa.eval.closed_loop import format_table  # noqa: E402
from lapa.eval.metrics import wilson_interval  # noqa: E402
from lapa.policy import base  # noqa: E402

SMALL = ["sim.image_size=32", "workers=0", "tasks=[pick,push]"]


def _args(out, *extra: str) -> list[str]:
    return ["sim", "eval", f"output={out}", "episodes=2", "videos_per_task=1", "max_steps=8", *SMALL, *extra]


def test_eval_random_policy(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_args(out, "policy=random")) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["families"]) == {"pick", "push"} and res["overall"]["episodes"] == 4
    assert res["overall"]["successes"] == 0  # 8 random steps never pick or push
    assert res["overall"]["ci95"] == pytest.approx(list(wilson_interval(0, 4)))
    assert len(res["videos"]) == 2
    with av.open(str(out / res["videos"][0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9  # the first frame + one per action
    text = capsys.readouterr().out
    assert format_table(res) in text and "overall" in text


def test_unknown_policy_lists_the_registered_names(tmp_path, capsys):
    assert main(_args(tmp_path / "eval", "policy=/no/such/policy")) == 2
    out = capsys.readouterr().out
    assert "/no/such/policy" in out and "oracle, random" in out
    assert not (tmp_path / "eval" / "metrics.json").exists()


class _Still:
    """Holds the arm still with the gripper open, and records what the evaluation hands it."""

    def __init__(self, directory: str, **kwargs) -> None:
        self.directory, self.options, self.resets = directory, kwargs, 0

    def reset(self, **kwargs) -> None:
        self.resets += 1

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and instruction
        return np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)


def test_an_export_directory_is_evaluated_through_its_kinds_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "_LOADERS", {})  # leave the process's registry as it was
    built: list[_Still] = []
    base.register_loader("test-still", lambda directory, **kw: built.append(_Still(directory, **kw)) or built[-1])
    export = tmp_path / "export"
    export.mkdir()
    (export / "info.json").write_text(json.dumps({"kind": "test-still", "steps": 0}))
    assert main(_args(tmp_path / "eval", f"policy={export}")) == 0
    res = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert res["policy"] == str(export) and res["overall"]["episodes"] == 4
    # The fail-fast check builds one, the (in-process) worker another, which runs every episode.
    assert len(built) == 2 and built[-1].directory == str(export) and built[-1].resets == 4
    assert {"oracle", "sim"} <= set(built[-1].options)
