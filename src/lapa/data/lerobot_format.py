"""Reading LeRobot datasets on local disk with pyarrow + PyAV (no `lerobot` package: it pulls torchvision).

Format v3.0 (many episodes per file; what `lerobot` writes since v0.4):
    meta/info.json                           codebase_version, fps, features {key: {dtype, shape, names}},
                                             chunks_size, data_path, video_path (templates)
    meta/tasks.parquet                       task text (column `task`, or the pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet     one row per episode: episode_index, tasks, length,
                                             data/chunk_index, data/file_index, dataset_from_index,
                                             dataset_to_index, videos/<key>/{chunk_index, file_index,
                                             from_timestamp, to_timestamp}
    data/chunk-*/file-*.parquet              one row per frame: index, episode_index, frame_index,
                                             timestamp (seconds from the episode's start), task_index,
                                             action, observation.state, ... (image features: {bytes, path})
    videos/<key>/chunk-*/file-*.mp4          episodes back to back; an episode's frame at `timestamp` is
                                             the video frame at `from_timestamp + timestamp`
Format v2.0 / v2.1 (one file per episode): `meta/episodes.jsonl` {episode_index, tasks, length},
`meta/tasks.jsonl` {task_index, task}, `data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`,
one mp4 per episode and camera (timestamps from 0); the templates come from info.json as in v3.

Errors in the dataset's description (what a user can fix with an option) raise `LeRobotError` with one
line naming the key and listing what exists; unreadable videos raise `video.VideoReadError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.data.images import decode_jpeg
from lapa.data.video import VideoReadError, _as_rgb

CAMERA_DTYPES = ("video", "image")


class LeRobotError(ValueError):
    """A dataset that does not have what the import needs; the message is one line."""


@dataclass(frozen=True)
class Episode:
    """Where one episode's rows and frames are."""

    index: int
    length: int
    tasks: list[str]
    data_file: Path  # parquet holding its rows (with other episodes' rows in v3)
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # camera -> (mp4, from_timestamp)


class LeRobotDataset:
    """The metadata of a LeRobot dataset at `root` (v2.x or v3.0): features, tasks, episodes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise LeRobotError(f"src={root}: no meta/info.json (not a LeRobot dataset)")
        self.info = json.loads(info_path.read_text())
        self.version = str(self.info.get("codebase_version", "?"))
        if not self.version.startswith(("v2", "v3")):
            raise LeRobotError(f"src={root}: codebase_version {self.version!r}; this importer reads v2.x and v3.x")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.chunks_size = int(self.info.get("chunks_size", 1000))
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes_v3() if self.version.startswith("v3") else self._read_episodes_v2()

    # ---- features ------------------------------------------------------------------------------------------
    @property
    def cameras(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in CAMERA_DTYPES]

    def camera(self, key: str | None, option: str = "camera") -> str:
        """`key` if it is a camera of the dataset; None: the only camera."""
        cameras = self.cameras
        if key is None:
            if len(cameras) != 1:
                raise LeRobotError(f"{option}=null: the dataset has {len(cameras)} cameras, choose one of "
                                   f"{cameras}" if cameras else f"{option}=null: the dataset has no camera")
            return cameras[0]
        if key not in cameras:
            raise LeRobotError(f"{option}={key}: no such camera; the dataset has {cameras}")
        return key

    def vector(self, key: str, option: str) -> tuple[int, list[str]]:
        """(width, names) of a numeric feature `key` (action, state)."""
        feature = self.features.get(key)
        if feature is None or feature.get("dtype") in CAMERA_DTYPES + ("string",):
            numeric = [k for k, f in self.features.items() if f.get("dtype") not in CAMERA_DTYPES + ("string",)]
            raise LeRobotError(f"{option}={key}: no such numeric feature; the dataset has {numeric}")
        shape = list(feature.get("shape") or [1])
        width = int(np.prod(shape))
        names = feature.get("names")
        if isinstance(names, dict):  # older datasets: {"motors": [...]}
            names = next(iter(names.values()), None)
        names = [str(n) for n in names] if isinstance(names, list) and len(names) == width else [
            f"{key}[{i}]" for i in range(width)]
        return width, names

    # ---- rows and frames --------------------------------------------------------------------------------------
    def read_rows(self, path: Path, columns: list[str]):
        """The `columns` (those present) of one data parquet, as a pyarrow Table."""
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        return pq.read_table(path, columns=[c for c in columns if c in present])

    def video_frames(self, episode: Episode, camera: str, timestamps: np.ndarray, tolerance_s: float,
                     convert) -> list[bytes | None]:
        """`convert(rgb uint8 [H, W, 3])` of the frame nearest each timestamp (seconds from the episode's
        start) within `tolerance_s`; None where there is none."""
        import av

        path, start = episode.videos[camera]
        if not path.is_file():
            raise VideoReadError("missing video", str(path.relative_to(self.root)))
        query = start + np.asarray(timestamps, dtype=np.float64)
        first, last = float(query.min()), float(query.max())
        times, images = [], []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if first > 0:  # to the keyframe at or before the episode's first frame
                    container.seek(max(0, round(first / stream.time_base) - 1), backward=True,
                                   any_frame=False, stream=stream)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * stream.time_base)
                    if t >= first - tolerance_s:
                        times.append(t)
                        images.append(convert(_as_rgb(frame.to_ndarray(format="rgb24"))))
                    if t >= last:
                        break
        except av.FFmpegError as err:
            raise VideoReadError("decode error", f"{path.name}: {err}") from None
        if not times:
            raise VideoReadError("no frames", f"{path.name} has no frame in [{first:.3f}, {last:.3f}] s")
        order = np.argsort(times, kind="stable")
        times_sorted = np.asarray(times)[order]
        pos = np.searchsorted(times_sorted, query)
        left, right = np.clip(pos - 1, 0, len(times_sorted) - 1), np.clip(pos, 0, len(times_sorted) - 1)
        nearest = np.where(np.abs(times_sorted[left] - query) <= np.abs(times_sorted[right] - query), left, right)
        close = np.abs(times_sorted[nearest] - query) <= tolerance_s
        return [images[order[i]] if ok else None for i, ok in zip(nearest, close)]

    @staticmethod
    def image_frames(column: list, convert) -> list[bytes | None]:
        """`convert` of the images stored in a parquet image column ({bytes, path} per row); None where
        a row holds no decodable image."""
        out = []
        for cell in column:
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            try:
                out.append(convert(_as_rgb(decode_jpeg(data))) if data else None)
            except Exception:  # PIL raises many types for a broken image
                out.append(None)
        return out

    # ---- metadata ------------------------------------------------------------------------------------------------
    def _read_tasks(self) -> dict[int, str]:
        import pyarrow.parquet as pq

        parquet, jsonl = self.root / "meta" / "tasks.parquet", self.root / "meta" / "tasks.jsonl"
        if parquet.is_file():
            table = pq.read_table(parquet)
            names = table.column_names
            text = next((c for c in ("task", "__index_level_0__") if c in names), None)
            if text is None or "task_index" not in names:
                raise LeRobotError(f"{parquet}: expected columns task and task_index, found {names}")
            return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(),
                                                    table.column(text).to_pylist())}
        if jsonl.is_file():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        return {}

    def _read_episodes_v3(self) -> list[Episode]:
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotError(f"src={self.root}: no meta/episodes/chunk-*/file-*.parquet")
        data_path = self.info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
        video_path = self.info.get("video_path") or ""
        episodes = []
        for path in files:
            names = pq.read_schema(path).names
            wanted = [n for n in names if not n.startswith("stats/")]
            for row in pq.read_table(path, columns=wanted).to_pylist():
                videos = {}
                for key in self.cameras:
                    if f"videos/{key}/chunk_index" in row and self.features[key]["dtype"] == "video":
                        file = video_path.format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                 file_index=row[f"videos/{key}/file_index"])
                        videos[key] = (self.root / file, float(row.get(f"videos/{key}/from_timestamp") or 0.0))
                data = data_path.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
                episodes.append(Episode(int(row["episode_index"]), int(row["length"]), list(row.get("tasks") or []),
                                        self.root / data, videos))
        return sorted(episodes, key=lambda e: e.index)

    def _read_episodes_v2(self) -> list[Episode]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.is_file():
            raise LeRobotError(f"src={self.root}: no meta/episodes.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        data_path = self.info.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")
        video_path = self.info.get("video_path") or ""
        episodes = []
        for row in rows:
            index = int(row["episode_index"])
            where = {"episode_chunk": index // self.chunks_size, "episode_index": index}
            videos = {key: (self.root / video_path.format(video_key=key, **where), 0.0)
                      for key in self.cameras if self.features[key]["dtype"] == "video"}
            tasks = row.get("tasks") or []
            episodes.append(Episode(index, int(row["length"]), [tasks] if isinstance(tasks, str) else list(tasks),
                                    self.root / data_path.format(**where), videos))
        return sorted(episodes, key=lambda e: e.index)
