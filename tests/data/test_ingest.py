"""`lapa ingest` on real video files of mixed formats and sizes, with broken files among them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from lapa.config import ConfigError, load
from lapa.data import ingest
from lapa.data.images import decode_jpeg
from lapa.data.ingest import IngestConfig, run

sys.path.insert(0, str(Path(__file__).parent))
from videos import bordered_rgb, frame_index, make_image_folder, make_video  # noqa: E402

# name -> (codec, frames, kwargs); all 10 fps
VALID = {
    "clips/a.mp4": ("libx264", 9, {}),
    "clips/b.avi": ("mpeg4", 7, {}),
    "c.mkv": ("libx264", 6, {"width": 96, "height": 64}),
    "d.webm": ("libvpx-vp9", 8, {}),
    "e.mov": ("libx264", 5, {"width": 32, "height": 80}),  # portrait
    "f.mkv": ("ffv1", 6, {"width": 65, "height": 47, "gray": True}),  # odd size, grayscale
    "g.webm": ("libvpx", 5, {"width": 8, "height": 8}),  # tiny
}
SEQUENCE_FRAMES = 12  # folder "seq/" holds img1.png .. img12.png
OFFSET = 2


def expected_pairs() -> int:
    return sum(n - OFFSET for _, n, _ in VALID.values()) + SEQUENCE_FRAMES - OFFSET


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    for name, (codec, frames, kwargs) in VALID.items():
        make_video(root / name, codec, frames=frames, **kwargs)
    make_image_folder(root / "seq", frames=SEQUENCE_FRAMES)
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is not a video\n" * 20)
    full = make_video(root / "full.mp4", "libx264", frames=8).read_bytes()
    (root / "truncated.mp4").write_bytes(full[: len(full) // 3])
    (root / "full.mp4").unlink()
    make_video(root / "short.mp4", "libx264", frames=2)  # 2 frames < offset + 1
    (root / "readme.txt").write_text("ignored: not a video extension")
    manifest = [{"video": "clips/a.mp4", "instruction": "pick up the red cube", "task": "pick"},
                {"video": "seq", "instruction": "open the drawer", "fps": 12},
                {"video": "gone.mp4", "instruction": "missing on disk"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return root


def ingest_cfg(video_dir: Path, out: Path, **overrides) -> IngestConfig:
    base = {"input": str(video_dir), "output": str(out), "offset": OFFSET, "size": 32,
            "samples_per_shard": 7, "workers": 0, "progress": False}
    base.update(overrides)
    return load("ingest", IngestConfig, [f"{k}={v}" for k, v in base.items()])


def read_shards(out: Path) -> dict[str, list[dict]]:
    """shard name -> samples {key: {suffix: bytes}} in tar order."""
    shards = {}
    for path in sorted(out.glob("*.tar")):
        samples: dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                samples.setdefault(key, {"__key__": key})[suffix] = tar.extractfile(member).read()
        shards[path.name] = list(samples.values())
    return shards


@pytest.fixture(scope="module")
def ingested(video_dir, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("shards")
    return out, run(ingest_cfg(video_dir, out))


def test_valid_videos_ingested_with_correct_frames(ingested):
    out, status = ingested
    assert status == 0
    shards = read_shards(out)
    samples = [s for items in shards.values() for s in items]
    assert len(samples) == expected_pairs()
    assert len(shards) == -(-expected_pairs() // 7)
    per_video = defaultdict(list)
    for s in samples:
        meta = json.loads(s["json"])
        t, t1 = decode_jpeg(s["t.jpg"]), decode_jpeg(s["t1.jpg"])
        assert t.shape == t1.shape == (32, 32, 3)
        # The pixels carry the source frame number: t1 really is OFFSET frames after t.
        assert frame_index(t) == meta["src_frame_t"]
        assert frame_index(t1) == meta["src_frame_t1"] == meta["src_frame_t"] + OFFSET
        assert meta["frame_idx_t1"] - meta["frame_idx"] == meta["offset"] == OFFSET
        per_video[meta["video_id"]].append(meta["frame_idx"])
        if meta["source"] == "clips/a.mp4":
            assert s["txt"].decode() == "pick up the red cube" and meta["task"] == "pick"
            assert meta["fps"] == 10
        elif meta["source"] == "seq":
            assert s["txt"].decode() == "open the drawer" and meta["fps"] == 12
        else:
            assert "txt" not in s
        assert "action" not in " ".join(s)
    expected_ids = {name.rsplit(".", 1)[0] for name in VALID} | {"seq"}
    assert set(per_video) == expected_ids
    for frames in per_video.values():  # every pair of every video, once
        assert sorted(frames) == list(range(len(frames)))
    # Pairs of one video are spread out: each shard mixes videos.
    for items in shards.values():
        if len(items) >= 4:
            assert len({json.loads(s["json"])["video_id"] for s in items}) >= 3
    assert not list(out.glob("*.tmp")) and not (out / ingest.CACHE_NAME).exists()


def test_broken_files_skipped_with_reasons(ingested):
    out, _ = ingested
    summary = json.loads((out / "ingest_summary.json").read_text())
    skipped = {s["video"]: s["reason"] for s in summary["skipped"]}
    assert skipped == {"empty.mp4": "empty file", "notes.mp4": "not a readable video",
                       "truncated.mp4": "not a readable video", "short.mp4": "too short for the offset",
                       "gone.mp4": "missing file"}
    assert summary["videos_found"] == len(VALID) + 1 + 5
    assert summary["videos_read"] == len(VALID) + 1
    assert summary["skip_reasons"]["not a readable video"] == 2
    assert summary["pairs_written"] == expected_pairs()
    assert summary["shards_written"] == len(summary["shards"]) == len(list(out.glob("*.tar")))
    assert summary["pairs_per_second_per_worker"] > 0


def test_rerun_of_complete_output_does_nothing(video_dir, ingested, capsys):
    out, _ = ingested
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert run(ingest_cfg(video_dir, out)) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before
    # ... but a different config is refused rather than mixed into the same output.
    assert run(ingest_cfg(video_dir, out, size=48)) == 2


def test_deterministic_across_runs_and_worker_counts(video_dir, ingested, tmp_path):
    out, _ = ingested
    other = tmp_path / "again"
    assert run(ingest_cfg(video_dir, other, workers=2)) == 0
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == sorted(p.name for p in other.glob("*.tar"))
    for name in names:
        assert (out / name).read_bytes() == (other / name).read_bytes(), name
    # Another seed gives another order.
    reseeded = tmp_path / "seed1"
    assert run(ingest_cfg(video_dir, reseeded, seed=1)) == 0
    assert (reseeded / names[0]).read_bytes() != (out / names[0]).read_bytes()


def test_killed_run_leaves_no_partial_shard_and_resumes(video_dir, ingested, tmp_path, monkeypatch):
    reference, _ = ingested
    out = tmp_path / "resume"
    real_write = ingest.write_shard
    calls = []

    def dying_write(path, samples):
        calls.append(path)
        if len(calls) == 3:  # killed while writing the third shard
            iterator = iter(samples)
            next(iterator)
            raise KeyboardInterrupt
        return real_write(path, samples)

    monkeypatch.setattr(ingest, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run(ingest_cfg(video_dir, out, keep_cache=True))
    done = sorted(p.name for p in out.glob("*.tar"))
    assert len(done) == 2 and not (out / "ingest_summary.json").exists()
    (out / ".pairs-000002.tar.x1y2.tmp").write_bytes(b"partial")  # what a SIGKILL would leave

    monkeypatch.setattr(ingest, "write_shard", real_write)
    assert run(ingest_cfg(video_dir, out, keep_cache=True)) == 0
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["shards_resumed"] == 2
    for p in reference.glob("*.tar"):
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert (out / ingest.CACHE_NAME).is_dir()  # keep_cache: the decoded frames were reused


def test_target_fps_and_offset_seconds(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "fast.mp4", "libx264", frames=20, fps=20)
    out = tmp_path / "out"
    assert run(ingest_cfg(src, out, fps=10, offset_seconds=0.2, offset="null")) == 0
    samples = [s for items in read_shards(out).values() for s in items]
    assert len(samples) == 10 - 2  # 20 frames at 20 fps -> 10 frames at 10 fps, offset 2 frames
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["fps"] == 10 and meta["offset"] == 2
        assert meta["src_frame_t"] == 2 * meta["frame_idx"]
        assert meta["src_frame_t1"] - meta["src_frame_t"] == 4
        assert frame_index(decode_jpeg(s["t1.jpg"])) == meta["src_frame_t1"]


def test_sidecar_action_and_csv_manifest(tmp_path):
    src, side = tmp_path / "in", tmp_path / "side"
    src.mkdir(), side.mkdir()
    make_video(src / "ep0.mp4", "libx264", frames=6)
    actions = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)  # [T-1, 7]
    np.savez(side / "ep0.npz", actions=actions)
    (src / "labels.csv").write_text('video,instruction\nep0.mp4,"push the cube, left"\n')
    out = tmp_path / "out"
    cfg = ingest_cfg(src, out, sidecar=side, manifest=src / "labels.csv", stride=2)
    assert run(cfg) == 0
    samples = [s for items in read_shards(out).values() for s in items]
    assert len(samples) == 2  # starts 0 and 2 (stride 2), offset 2 within 6 frames
    for s in samples:
        meta = json.loads(s["json"])
        a, b = meta["src_frame_t"], meta["src_frame_t1"]
        action = np.load(io.BytesIO(s["action.npy"]))
        assert action.dtype == np.float32 and action.shape == (7,)
        np.testing.assert_allclose(action[:6], actions[a:b, :6].sum(0))
        assert action[6] == actions[b - 1, 6]
        assert s["txt"].decode() == "push the cube, left"
    assert json.loads((out / "ingest_summary.json").read_text())["pairs_with_action"] == 2


WHITE, GRAY, BLACK = (170, 256), (60, 140), (0, 40)  # luma ranges: frame band, frame inside, pad bars


def strip(luma: np.ndarray, side: str, depth: tuple[int, int]) -> float:
    """Mean luma of a strip `depth` (from, to) pixels in from one side, over the middle of that side."""
    n = luma.shape[0]
    mid, (a, b) = slice(n // 2 - 8, n // 2 + 8), depth
    return float({"left": luma[mid, a:b], "right": luma[mid, n - b:n - a], "top": luma[a:b, mid],
                  "bottom": luma[n - b:n - a, mid]}[side].mean())


# video -> mode -> {(sides, depth): expected luma range}. Frames are gray inside a white band
# (`videos.bordered_rgb`); the output is 64 x 64.
EXPECTED_EDGES = {
    "wide.mp4": {  # 160 x 120 (4:3)
        "crop": {(("left", "right"), (0, 2)): GRAY, (("top", "bottom"), (0, 2)): WHITE},  # long side cut
        "pad": {(("top", "bottom"), (0, 6)): BLACK, (("top", "bottom"), (9, 11)): WHITE,  # 8-row bars
                (("left", "right"), (0, 2)): WHITE},
        "squash": {(("left", "right", "top", "bottom"), (0, 2)): WHITE},
    },
    "tall.mp4": {  # 96 x 160 (portrait)
        "crop": {(("top", "bottom"), (0, 2)): GRAY, (("left", "right"), (0, 2)): WHITE},
        "pad": {(("left", "right"), (0, 11)): BLACK, (("left", "right"), (14, 16)): WHITE,  # 13-col bars
                (("top", "bottom"), (0, 2)): WHITE},
        "squash": {(("left", "right", "top", "bottom"), (0, 2)): WHITE},
    },
    "square.mp4": {mode: {(("left", "right", "top", "bottom"), (0, 2)): WHITE, (("left",), (20, 30)): GRAY}
                   for mode in ("crop", "pad", "squash")},
}


def test_resize_modes_on_wide_portrait_and_square_videos(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, (w, h) in {"wide.mp4": (160, 120), "tall.mp4": (96, 160), "square.mp4": (120, 120)}.items():
        make_video(src / name, "libx264", frames=4, width=w, height=h, pattern=bordered_rgb)
    square_frames = {}
    for mode in ("crop", "pad", "squash"):
        out = tmp_path / mode
        assert run(ingest_cfg(src, out, size=64, offset=1, resize_mode=mode)) == 0
        samples = [s for items in read_shards(out).values() for s in items]
        assert len(samples) == 3 * 3
        for s in samples:
            meta = json.loads(s["json"])
            assert meta["resize_mode"] == mode
            t = decode_jpeg(s["t.jpg"])
            assert t.shape == (64, 64, 3)
            luma = t.astype(np.float32).mean(axis=2)
            for (sides, depth), (low, high) in EXPECTED_EDGES[meta["source"]][mode].items():
                for side in sides:
                    assert low <= strip(luma, side, depth) < high, (meta["source"], mode, side, depth)
            if meta["source"] == "square.mp4":
                square_frames.setdefault(mode, set()).add(s["t.jpg"])
        summary = json.loads((out / "ingest_summary.json").read_text())
        assert summary["config"]["resize_mode"] == mode
    assert square_frames["crop"] == square_frames["pad"] == square_frames["squash"]  # nothing to change
    # An output written with another mode is refused, not mixed.
    assert run(ingest_cfg(src, tmp_path / "crop", size=64, offset=1, resize_mode="pad")) == 2
    with pytest.raises(ConfigError, match="resize_mode='zoom'"):
        ingest_cfg(src, tmp_path / "zoom", resize_mode="zoom")


def test_nothing_ingested_is_an_error(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "zero.mov").write_bytes(b"")
    assert run(ingest_cfg(src, tmp_path / "out")) == 1


def test_invalid_config_names_key(tmp_path):
    with pytest.raises(ConfigError, match="offset=0"):
        ingest_cfg(tmp_path, tmp_path, offset=0)
    with pytest.raises(ConfigError, match="prefix"):
        ingest_cfg(tmp_path, tmp_path, prefix="a.b")


def test_cli_help_and_run(video_dir, tmp_path):
    exe = Path(sys.executable).parent / "lapa"
    helped = subprocess.run([str(exe), "ingest", "--help"], capture_output=True, text=True, check=True)
    assert "input" in helped.stdout and "samples_per_shard" in helped.stdout
    out = tmp_path / "cli"
    done = subprocess.run([str(exe), "ingest", f"input={video_dir}", f"output={out}", "size=16",
                           "workers=0", "progress=false", "offset=3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and len(list(out.glob("pairs-*.tar"))) == 1
