"""`lapa import-lerobot` on small LeRobot datasets (v3.0 and v2.1) written by the test itself."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lapa.cli import main
from lapa.config import ConfigError, load
from lapa.data import lerobot
from lapa.data.images import decode_jpeg
from lapa.data.lerobot import ImportLeRobotConfig, run
from lapa.data.loader import DataConfig, eval_loader
from lapa.data.robot_steps import ROBOT_STEPS

sys.path.insert(0, str(Path(__file__).parent))
from lerobot_synth import EPISODES, FRONT, TASKS, WRIST, action, make_v3, make_v21, starts  # noqa: E402
from videos import frame_index  # noqa: E402


@pytest.fixture(scope="module")
def v3(tmp_path_factory) -> Path:
    return make_v3(tmp_path_factory.mktemp("lr") / "my.robot-v3")


@pytest.fixture(scope="module")
def v3_wide(tmp_path_factory) -> Path:
    return make_v3(tmp_path_factory.mktemp("lr") / "wide", action_width=9)


def cfg(src: Path, out: Path, **overrides) -> ImportLeRobotConfig:
    base = {"src": str(src), "output": str(out), "size": 32, "samples_per_shard": 4, "progress": False}
    base.update(overrides)
    return load("import_lerobot", ImportLeRobotConfig, [f"{k}={v}" for k, v in base.items()])


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return samples


def check_samples(samples: dict, name: str, wrist: bool, state: bool = True) -> None:
    """Every frame of every episode arrived: its own image, action, task text, step."""
    assert len(samples) == sum(n for _, n, _ in EPISODES)
    for e, n, task in EPISODES:
        for t in range(n):
            s = samples[f"{name}-ep{e:06d}_{t:06d}"]
            g = starts()[e] + t
            image = decode_jpeg(s["jpg"])
            assert image.shape == (32, 32, 3)
            assert frame_index(image) == g  # the right frame (JPEG/video loss leaves the counter readable)
            if wrist:
                assert frame_index(decode_jpeg(s["wrist.jpg"])) == g
            assert np.array_equal(np.load(io.BytesIO(s["action.npy"])), action(e, t))
            assert np.load(io.BytesIO(s["action.npy"])).dtype == np.float32
            assert s["txt"].decode() == TASKS[task]
            meta = json.loads(s["json"])
            assert meta["episode_id"] == f"{name}-ep{e:06d}" and meta["step"] == t
            assert meta["task"] == TASKS[task] and meta["source"] == "lerobot" and meta["episode_index"] == e
            assert meta["timestamp"] == pytest.approx(t / 10)
            assert ("state.npy" in s) == state
            if state:
                assert np.load(io.BytesIO(s["state.npy"])).tolist() == [g, 1, 2, 3]


def test_v3_frames_actions_and_task_text_arrive(v3, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(cfg(v3, out, camera=FRONT, wrist_camera=WRIST)) == 0
    check_samples(read_samples(out), "my_robot-v3", wrist=True)
    summary = json.loads((out / "import_summary.json").read_text())
    assert summary["steps_written"] == 13 and summary["version"] == "v3.0" and summary["steps_skipped"] == {}
    assert summary["shards"] == [f"steps-{i:06d}.tar" for i in range(4)]
    assert "wrote 13 steps of 3/3 episodes in 4 shards" in capsys.readouterr().out
    # what the Stage 3 loader reads: every sample valid, in order
    data = DataConfig(train_shards=str(out), val_shards=str(out), batch_size=5, num_workers=0, image_size=32)
    batches = list(eval_loader(data, ROBOT_STEPS, rank=0, world=1))
    assert sum(len(b["text"]) for b in batches) == 13
    assert batches[0]["actions"].shape == (5, 7) and batches[0]["image"].shape == (5, 3, 32, 32)


def test_v21_layout(tmp_path):
    out = tmp_path / "out"
    src = make_v21(tmp_path / "v21")
    assert run(cfg(src, out, camera=FRONT, wrist_camera=WRIST, name="old")) == 0
    check_samples(read_samples(out), "old", wrist=True)


def test_selection_task_override_and_no_state(v3, tmp_path):
    out = tmp_path / "out"
    assert run(cfg(v3, out, camera=FRONT, episodes="[2,1]", max_episodes=1, task="'do it'",
                   state_key="null")) == 0
    samples = read_samples(out)
    assert sorted(samples) == [f"my_robot-v3-ep000001_{t:06d}" for t in range(4)]
    assert {s["txt"] for s in samples.values()} == {b"do it"}
    assert not any("state.npy" in s for s in samples.values())


def test_wider_action_needs_action_dims(v3_wide, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert run(cfg(v3_wide, tmp_path / "a", camera=FRONT)) == 2
    assert "action_key=action: 9 values per frame (x, y, z, roll, pitch, yaw, gripper, extra0, extra1), " \
           "not 7; pick" in caplog.text
    assert not (tmp_path / "a").exists()  # nothing written
    out = tmp_path / "b"
    assert run(cfg(v3_wide, out, camera=FRONT, action_dims="[0,1,2,3,4,8,6]")) == 0
    s = read_samples(out)["wide-ep000001_000002"]
    expected = action(1, 2, width=9)[[0, 1, 2, 3, 4, 8, 6]]
    assert np.array_equal(np.load(io.BytesIO(s["action.npy"])), expected)
    assert json.loads((out / "import_summary.json").read_text())["action_names"][5] == "extra1"


@pytest.mark.parametrize("overrides, message", [
    ({"camera": "observation.images.top"}, "camera=observation.images.top: no such camera; the dataset has "
                                           "['observation.images.front', 'observation.images.wrist']"),
    ({}, "camera=null: the dataset has 2 cameras, choose one of ['observation.images.front', "),
    ({"camera": FRONT, "wrist_camera": "cam"}, "wrist_camera=cam: no such camera"),
    ({"camera": FRONT, "action_key": "act"}, "action_key=act: no such numeric feature; the dataset has "
                                             "['observation.state', 'action', 'timestamp'"),
    ({"camera": FRONT, "state_key": "observation.joints"}, "state_key=observation.joints: no such numeric"),
    ({"camera": FRONT, "action_dims": "[0,1,2,3,4,5,7]"}, "action_dims=[0, 1, 2, 3, 4, 5, 7]: indices must be "
                                                          "in 0..6"),
    ({"camera": FRONT, "episodes": "[0,5]"}, "episodes=[0, 5]: no episode(s) [5]; the dataset has 3 (0..2)"),
])
def test_missing_keys_fail_in_one_line_listing_what_exists(v3, tmp_path, caplog, overrides, message):
    with caplog.at_level(logging.ERROR):
        assert run(cfg(v3, tmp_path / "out", **overrides)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and message in errors[0], errors


def test_not_a_dataset_and_bad_options(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert run(cfg(tmp_path, tmp_path / "out")) == 2
    assert "no meta/info.json (not a LeRobot dataset)" in caplog.text
    with pytest.raises(ConfigError, match="action_dims"):
        cfg(tmp_path, tmp_path / "out", action_dims="[0,1]")


def test_resume_after_a_kill_gives_the_same_shards(v3, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "ref"
    assert run(cfg(v3, reference, camera=FRONT, samples_per_shard=3)) == 0
    out = tmp_path / "out"
    real = lerobot.episode_samples

    def killed_at_episode_2(dataset, plan, episode, *args):
        if episode.index == 2:
            raise KeyboardInterrupt
        return real(dataset, plan, episode, *args)

    monkeypatch.setattr(lerobot, "episode_samples", killed_at_episode_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(v3, out, camera=FRONT, samples_per_shard=3))
    partial = sorted(p.name for p in out.glob("*.tar"))
    assert partial == ["steps-000000.tar", "steps-000001.tar"]  # 9 samples of episodes 0, 1: shard 2 unfinished
    assert not (out / "import_summary.json").exists()
    monkeypatch.setattr(lerobot, "episode_samples", real)
    assert run(cfg(v3, out, camera=FRONT, samples_per_shard=3)) == 0
    assert "resuming at shard 2" in capsys.readouterr().out
    names = sorted(p.name for p in reference.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == names and len(names) == 5
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "import_summary.json").read_text())["shards_resumed"] == 2
    assert run(cfg(v3, out, camera=FRONT, samples_per_shard=3)) == 0
    assert "already complete" in capsys.readouterr().out
    assert run(cfg(v3, out, camera=FRONT, samples_per_shard=3, size=48)) == 2  # other options: refused


def test_unreadable_episode_is_skipped_and_reported(tmp_path):
    src = make_v3(tmp_path / "broken")
    video = src / "videos" / FRONT / "chunk-000" / "file-001.mp4"  # episode 2's
    video.write_bytes(video.read_bytes()[:100])
    out = tmp_path / "out"
    assert run(cfg(src, out, camera=FRONT)) == 0
    summary = json.loads((out / "import_summary.json").read_text())
    assert summary["steps_written"] == 9
    assert [s["episode"] for s in summary["episodes_skipped"]] == [2]
    shutil.rmtree(out)
    video.unlink()
    assert run(cfg(src, out, camera=FRONT)) == 0
    assert json.loads((out / "import_summary.json").read_text())["episodes_skipped"][0]["reason"] == "missing video"


def test_frames_without_video_frame_or_with_bad_action_are_skipped_and_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = make_v3(tmp_path / "odd")
    episodes_file = src / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    meta = pq.read_table(episodes_file)
    column = f"videos/{FRONT}/from_timestamp"
    shifted = [t + (0.05 if e == 2 else 0.0) for e, t in zip(meta.column("episode_index").to_pylist(),
                                                             meta.column(column).to_pylist())]
    pq.write_table(meta.set_column(meta.column_names.index(column), column, pa.array(shifted)), episodes_file)
    data_file = src / "data" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(data_file)
    actions = rows.column("action").to_pylist()
    actions[1][3] = float("nan")  # episode 0, frame 1
    pq.write_table(rows.set_column(rows.column_names.index("action"), "action",
                                   pa.array(actions, pa.list_(pa.float32()))), data_file)
    out = tmp_path / "out"
    assert run(cfg(src, out, camera=FRONT)) == 0
    summary = json.loads((out / "import_summary.json").read_text())
    assert summary["steps_skipped"] == {"bad action": 1, "no frame": 4}  # episode 2 lies half a frame off
    assert summary["steps_written"] == 8 and "odd-ep000000_000001" not in read_samples(out)


def test_cli_takes_src_and_output_as_positional_arguments(v3, tmp_path):
    out = tmp_path / "cli"
    assert main(["import-lerobot", str(v3), str(out), f"camera={FRONT}", "size=32", "progress=false",
                 "max_episodes=1"]) == 0
    assert len(read_samples(out)) == EPISODES[0][1]
    assert main(["import-lerobot", "--help"]) == 0
    assert main(["import-lerobot", str(tmp_path / "nowhere"), str(tmp_path / "o2"), "progress=false"]) == 2
    assert not (tmp_path / "o2").exists()
