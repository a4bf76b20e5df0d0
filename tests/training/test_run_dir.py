"""`lapa.training.run_dir`: resume resolution, clean-up after a kill, checkpoint rotation of a plain loop,
config and summary files."""

from __future__ import annotations

import json
import pathlib

import pytest

from lapa.training.run_dir import (
    CheckpointRotation,
    RunDir,
    drop_checkpoints_after,
    resolve_resume,
    step_checkpoints,
    step_of,
)


def _touch(path: pathlib.Path, text: str = "x") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _names(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_resolve_resume(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.resolve_resume(None) is None
    assert run.resolve_resume("auto") is None  # no checkpoint yet: a fresh run, not an error
    _touch(run.last)
    assert run.resolve_resume("auto") == str(tmp_path / "run/checkpoints/last.ckpt")
    assert run.resolve_resume(tmp_path / "other.ckpt") == str(tmp_path / "other.ckpt")

    dirs = RunDir(tmp_path / "dcp", suffix="")  # directory checkpoints (DCP), `last` a link to one
    assert dirs.resolve_resume("auto") is None
    _touch(dirs.path(3) / ".metadata")
    dirs.last.symlink_to(dirs.path(3).name)
    assert dirs.resolve_resume("auto") == str(tmp_path / "dcp/checkpoints/last")
    assert step_of(dirs.last) == 3
    dirs.path(3).rename(dirs.checkpoints / "elsewhere")  # a dangling `last` is no checkpoint
    assert resolve_resume("auto", dirs.last) is None


def test_step_of_and_step_checkpoints(tmp_path):
    assert [step_of(n) for n in ("step_00000012.ckpt", "step_00000012-v1.ckpt", "step_7", "last.ckpt",
                                 "best")] == [12, 12, 7, None, None]
    for name in ("step_00000010.ckpt", "step_00000002.ckpt", "last.ckpt", "steps.txt", "step_x.ckpt"):
        _touch(tmp_path / name)
    _touch(tmp_path / "step_00000004" / "shard_0.distcp")
    assert step_checkpoints(tmp_path) == [(2, tmp_path / "step_00000002.ckpt"), (4, tmp_path / "step_00000004"),
                                          (10, tmp_path / "step_00000010.ckpt")]


def test_clean_after_a_simulated_kill(tmp_path):
    """Killed after writing step 6 (and half of a temporary file) but before `last` moved on from
    step 4: the resumed run starts from step 4, so step 6 is an orphan it will write again."""
    run = RunDir(tmp_path)
    for step in (2, 4, 6):
        _touch(run.path(step), f"state {step}")
    _touch(run.checkpoints / "step_00000006-v1.ckpt")  # a Lightning version-counter duplicate
    _touch(run.checkpoints / "step_00000008" / "shard_0.distcp")  # a half-written directory checkpoint
    _touch(run.last, "state 4")
    _touch(run.checkpoints / ".last.ckpt.k2j4.tmp", "half")  # what atomic_path leaves after a kill
    assert run.clean(None) == []  # a fresh run: only temporaries go
    assert ".last.ckpt.k2j4.tmp" not in _names(run.checkpoints)
    assert len(_names(run.checkpoints)) == 6

    dropped = run.clean(resume_step=4)
    assert sorted(p.name for p in dropped) == ["step_00000006-v1.ckpt", "step_00000006.ckpt", "step_00000008"]
    assert _names(run.checkpoints) == ["last.ckpt", "step_00000002.ckpt", "step_00000004.ckpt"]
    assert RunDir(tmp_path / "never_started").clean(resume_step=3) == []


def test_drop_also_removes_links_left_dangling(tmp_path):
    _touch(tmp_path / "step_00000004.ckpt")
    _touch(tmp_path / "step_00000006.ckpt")
    (tmp_path / "best.ckpt").symlink_to("step_00000006.ckpt")
    (tmp_path / "last.ckpt").symlink_to("step_00000004.ckpt")
    dropped = drop_checkpoints_after(tmp_path, 4)
    assert sorted(p.name for p in dropped) == ["best.ckpt", "step_00000006.ckpt"]
    assert _names(tmp_path) == ["last.ckpt", "step_00000004.ckpt"]


def _save(rotation: CheckpointRotation, step: int, score: float | None = None) -> dict:
    """What a plain loop does at a save: bookkeeping, the state (with the rotation's), the write, commit."""
    rotation.update_best(step, score)
    state = {"step": step, "rotation": rotation.state_dict()}
    rotation.path(step).write_text(json.dumps(state))
    rotation.commit(step)
    return state


def test_rotation_keeps_the_newest_k_and_the_best(tmp_path):
    rotation = RunDir(tmp_path).rotation(keep=2)
    rotation.directory.mkdir()
    scores = {2: 0.9, 4: 0.3, 6: 0.5, 8: float("nan"), 10: 0.4}
    for step in range(1, 11):
        _save(rotation, step, scores.get(step))
    # step 4 has the lowest score: kept as `best` although it is older than the two newest.
    assert _names(tmp_path / "checkpoints") == ["best.ckpt", "last.ckpt", "step_00000004.ckpt",
                                                "step_00000009.ckpt", "step_00000010.ckpt"]
    assert (step_of(rotation.last), step_of(rotation.best)) == (10, 4)
    assert json.loads(rotation.last.read_text())["step"] == 10  # links read like the files themselves
    assert (rotation.best_score, rotation.best_step) == (0.3, 4)

    _save(rotation, 11, 0.1)  # a new best: the old best is beyond the newest 2 and goes
    assert _names(tmp_path / "checkpoints") == ["best.ckpt", "last.ckpt", "step_00000010.ckpt",
                                                "step_00000011.ckpt"]
    assert step_of(rotation.best) == 11

    maximise = CheckpointRotation(tmp_path / "acc", keep=1, mode="max")
    assert maximise.update_best(1, 0.5) and maximise.update_best(2, 0.7) and not maximise.update_best(3, 0.6)
    with pytest.raises(ValueError, match="keep=0"):
        CheckpointRotation(tmp_path, keep=0)
    with pytest.raises(FileNotFoundError):
        maximise.commit(5)  # nothing was written at step 5


def test_rotation_resumes_after_a_kill_between_save_and_commit(tmp_path):
    run = RunDir(tmp_path)
    rotation = run.rotation(keep=2)
    rotation.directory.mkdir()
    for step, score in ((2, 0.5), (4, 0.2), (6, 0.4)):
        _save(rotation, step, score)
    rotation.update_best(8, 0.1)
    rotation.path(8).write_text("{}")  # written, then killed before commit: `last` still -> step 6

    resumed = run.rotation(keep=2)
    last = run.resolve_resume("auto")
    state = json.loads(pathlib.Path(last).read_text())
    assert state["step"] == step_of(last) == 6
    resumed.load_state_dict(state["rotation"])
    assert run.clean(resume_step=6) == [run.path(8)]
    _save(resumed, 8, 0.3)  # replayed: this time not a best (the first run's 0.1 never happened)
    assert (resumed.best_step, step_of(resumed.best)) == (4, 4)
    assert _names(run.checkpoints) == ["best.ckpt", "last.ckpt", "step_00000004.ckpt", "step_00000006.ckpt",
                                       "step_00000008.ckpt"]


def test_config_and_summary_are_written_atomically(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    assert run.write_config("a: 1\n").read_text() == "a: 1\n"  # creates the folder
    first = {"steps": 4, "best": None}
    assert json.loads(run.write_summary(first).read_text()) == first

    def killed_mid_write(self, text, *args, **kwargs):
        with open(self, "w") as fh:
            fh.write(text[: len(text) // 2])
        raise OSError("killed")

    monkeypatch.setattr(pathlib.Path, "write_text", killed_mid_write)
    with pytest.raises(OSError, match="killed"):
        run.write_summary({"steps": 8, "best": 0.1})
    monkeypatch.undo()
    assert json.loads((tmp_path / "run/summary.json").read_text()) == first  # the old one, whole
    assert _names(tmp_path / "run") == ["config.yaml", "summary.json"]  # no temporary left behind


def test_start_refuses_a_folder_holding_a_run_unless_resume_or_overwrite(tmp_path):
    from lapa.config import ConfigError

    run = RunDir(tmp_path / "run")
    assert run.start(None) is None  # a new folder: a fresh run
    for name in ("config.yaml", "checkpoints/step_00000002.ckpt", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "final.pt", "logs/version_0/metrics.csv", "notes.txt"):
        _touch(tmp_path / "run" / name)
    with pytest.raises(ConfigError, match="already holds a run") as err:
        run.start(None, outputs=("final.pt", "logs"))
    assert "resume=auto" in str(err.value) and "overwrite=true" in str(err.value)
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()  # refused: nothing touched
    assert run.start("auto", outputs=("final.pt",)) == str(run.last)
    with pytest.raises(ConfigError, match="overwrite=true with resume=auto"):
        run.start("auto", overwrite=True)

    # Ranks other than 0 follow rank 0 (they may start after it wrote this run's config.yaml).
    assert run.start(None, outputs=("final.pt",), rank_zero=False) is None
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()

    assert run.start(None, overwrite=True, outputs=("final.pt", "logs")) is None
    assert _names(tmp_path / "run") == ["notes.txt"]  # the old run's files only; nothing else
    assert run.previous_run(("final.pt",)) == []
