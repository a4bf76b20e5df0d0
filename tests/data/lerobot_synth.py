"""Small LeRobot datasets written the way the published format describes them (v3.0 and v2.1), with
pyarrow and PyAV: 3 episodes, 13 frames, two cameras. Frame g (global index) shows `videos.frame_rgb(g)`,
so `videos.frame_index` recovers g from any decoded, resized frame.

v3.0: episodes 0 and 1 share data/chunk-000/file-000.parquet and videos/<front>/chunk-000/file-000.mp4
(episode 1 starts 0.5 s into that video), episode 2 has file-001 of both. The wrist camera is an
`image` feature (PNG bytes inside the data parquet). v2.1: one parquet and one mp4 per episode.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from videos import frame_rgb, make_video

FPS = 10
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
TASKS = ["pick up the red cube", "push the blue block to the left"]
EPISODES = [(0, 5, 0), (1, 4, 1), (2, 4, 0)]  # (episode index, frames, task index)
FRONT_HW, WRIST_HW = (48, 64), (32, 32)


def starts() -> dict[int, int]:
    """Global index of each episode's first frame."""
    out, g = {}, 0
    for e, n, _ in EPISODES:
        out[e] = g
        g += n
    return out


def action(e: int, t: int, width: int = 7) -> np.ndarray:
    """Action of episode e, frame t: [e, t, 0.01 * g, -0.5, 0, 0.25 * t, gripper], padded to `width`."""
    g = starts()[e] + t
    base = [e, t, 0.01 * g, -0.5, 0.0, 0.25 * t, float(t % 2)]
    return np.array(base + [100.0 + i for i in range(width - 7)], dtype=np.float32)


def _features(action_width: int, wrist_dtype: str) -> dict:
    video_info = {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p", "has_audio": False}
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"] + [f"extra{i}" for i in range(action_width - 7)]
    return {
        FRONT: {"dtype": "video", "shape": [*FRONT_HW, 3], "names": ["height", "width", "channels"],
                "info": video_info},
        WRIST: {"dtype": wrist_dtype, "shape": [*WRIST_HW, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
        "action": {"dtype": "float32", "shape": [action_width], "names": names},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _png(g: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame_rgb(g, WRIST_HW[1], WRIST_HW[0])).save(buf, format="PNG")
    return buf.getvalue()


def _rows(episodes: list[tuple[int, int, int]], action_width: int, wrist_dtype: str) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("index", "episode_index", "frame_index", "timestamp", "task_index",
                                             "action", "observation.state", WRIST)}
    for e, n, task in episodes:
        for t in range(n):
            g = starts()[e] + t
            cols["index"].append(g)
            cols["episode_index"].append(e)
            cols["frame_index"].append(t)
            cols["timestamp"].append(np.float32(t / FPS))
            cols["task_index"].append(task)
            cols["action"].append(action(e, t, action_width).tolist())
            cols["observation.state"].append([float(g), 1.0, 2.0, 3.0])
            cols[WRIST].append({"bytes": _png(g), "path": f"frame_{g:06d}.png"})
    arrays = {
        "index": pa.array(cols["index"], pa.int64()), "episode_index": pa.array(cols["episode_index"], pa.int64()),
        "frame_index": pa.array(cols["frame_index"], pa.int64()),
        "timestamp": pa.array(cols["timestamp"], pa.float32()),
        "task_index": pa.array(cols["task_index"], pa.int64()),
        "action": pa.array(cols["action"], pa.list_(pa.float32())),
        "observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32())),
    }
    if wrist_dtype == "image":
        arrays[WRIST] = pa.array(cols[WRIST], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table(arrays)


def _video(path: Path, episodes: list[tuple[int, int, int]], hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    first, total = starts()[episodes[0][0]], sum(n for _, n, _ in episodes)
    make_video(path, "libx264", frames=total, width=hw[1], height=hw[0], fps=FPS,
               pattern=lambda i, w, h: frame_rgb(first + i, w, h))


def _info(version: str, action_width: int, wrist_dtype: str, data_path: str, video_path: str) -> dict:
    total = sum(n for _, n, _ in EPISODES)
    return {"codebase_version": version, "robot_type": "synthetic", "total_episodes": len(EPISODES),
            "total_frames": total, "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(EPISODES)}"}, "data_path": data_path, "video_path": video_path,
            "features": _features(action_width, wrist_dtype)}


def make_v3(root: Path, action_width: int = 7, wrist_dtype: str = "image") -> Path:
    """A v3.0 dataset at `root` (see the module docstring)."""
    files = {0: [EPISODES[0], EPISODES[1]], 1: [EPISODES[2]]}  # file index -> its episodes
    (root / "meta").mkdir(parents=True)
    info = _info("v3.0", action_width, wrist_dtype, "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                 "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pq.write_table(pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS}),
                   root / "meta" / "tasks.parquet")
    meta: dict[str, list] = {}
    for file, episodes in files.items():
        data = root / "data" / "chunk-000" / f"file-{file:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_rows(episodes, action_width, wrist_dtype), data)
        _video(root / "videos" / FRONT / "chunk-000" / f"file-{file:03d}.mp4", episodes, FRONT_HW)
        if wrist_dtype == "video":
            _video(root / "videos" / WRIST / "chunk-000" / f"file-{file:03d}.mp4", episodes, WRIST_HW)
        offset = 0
        for e, n, task in episodes:
            row = {"episode_index": e, "tasks": [TASKS[task]], "length": n, "data/chunk_index": 0,
                   "data/file_index": file, "dataset_from_index": starts()[e], "dataset_to_index": starts()[e] + n,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                   "stats/action/mean": [0.0] * action_width}
            for key in [FRONT] + ([WRIST] if wrist_dtype == "video" else []):
                row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": offset / FPS, f"videos/{key}/to_timestamp": (offset + n) / FPS}
            offset += n
            for k, v in row.items():
                meta.setdefault(k, []).append(v)
    episodes_file = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    episodes_file.parent.mkdir(parents=True)
    pq.write_table(pa.table(meta), episodes_file)
    return root


def make_v21(root: Path) -> Path:
    """A v2.1 dataset at `root`: one parquet and one mp4 per episode and camera (both cameras videos)."""
    (root / "meta").mkdir(parents=True)
    info = _info("v2.1", 7, "video", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                 "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "tasks.jsonl").write_text("".join(
        json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": e, "tasks": [TASKS[task]], "length": n}) + "\n" for e, n, task in EPISODES))
    for episode in EPISODES:
        e = episode[0]
        data = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_rows([episode], 7, "video"), data)
        for key, hw in ((FRONT, FRONT_HW), (WRIST, WRIST_HW)):
            _video(root / "videos" / "chunk-000" / key / f"episode_{e:06d}.mp4", [episode], hw)
    return root
