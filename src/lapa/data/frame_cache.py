"""Phase 1 of ingest: decode each video once into a cache of resized JPEG frames.

Why a cache: the pairs of one video are spread over many shards (so a shuffle buffer mixes videos),
and decoding the video again for every shard that needs two of its frames would multiply the decoding
cost. Instead a worker decodes a video once, resizes and JPEG-encodes the frames that some pair uses,
and appends them to `CACHE/<index>.jpgs`; `CACHE/<index>.npz` indexes them (byte offsets) and records
what planning needs (frame count, fps, offset, per-pair sizes and actions). Only one video's frames are
in memory at a time. The index is written last and atomically, so its presence means the entry is
complete: a resumed ingest reuses it without decoding again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.data.images import encode_jpeg, resize_square
from lapa.data.manifest import load_sidecar_actions, pair_action
from lapa.data.video import VideoReader, VideoReadError, resample_indices
from lapa.io import atomic_path


@dataclass(frozen=True)
class VideoJob:
    """Everything a worker needs to decode one video (picklable, no open handles)."""

    index: int
    path: str
    source: str  # path relative to the ingest input (recorded in every pair's json)
    sequence_fps: float  # frame rate assumed for an image-sequence folder
    target_fps: float | None
    offset: int | None  # in resampled frames; None: from offset_seconds
    offset_seconds: float | None
    stride: int
    size: int
    resize_mode: str  # `images.RESIZE_MODES`: how a frame becomes size x size
    quality: int
    sidecar: str | None  # the video's sidecar .npz when ingest has a sidecar dir, else None
    cache_dir: str


@dataclass
class VideoScan:
    """Result of phase 1 for one video: either a cache entry or the reason it was skipped."""

    index: int
    ok: bool
    reason: str = ""
    detail: str = ""
    num_frames: int = 0  # frames of the resampled stream
    fps: float = 0.0  # effective (resampled) frame rate
    offset: int = 0
    pair_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [P] JPEG bytes
    has_actions: bool = False
    warning: str = ""  # a non-fatal problem (e.g. missing sidecar), counted in the summary

    @property
    def num_pairs(self) -> int:
        return len(self.pair_bytes)


def pair_frames(num_frames: int, offset: int, stride: int) -> np.ndarray:
    """Resampled index t of every pair (t, t + offset) of a video: int64 [P]."""
    return np.arange(0, max(0, num_frames - offset), stride, dtype=np.int64)


def _paths(cache_dir: str | Path, index: int) -> tuple[Path, Path]:
    base = Path(cache_dir) / f"{index:07d}"
    return base.with_suffix(".jpgs"), base.with_suffix(".npz")


def scan_video(job: VideoJob) -> VideoScan:
    """Decode `job`'s video into the cache (or reuse a complete entry). Never raises for bad input."""
    jpgs_path, index_path = _paths(job.cache_dir, job.index)
    if index_path.exists():
        cached = _load_scan(job, index_path)
        if cached is not None:
            return cached
    try:
        return _decode_to_cache(job, jpgs_path, index_path)
    except VideoReadError as err:
        jpgs_path.unlink(missing_ok=True)
        return VideoScan(job.index, ok=False, reason=err.reason, detail=err.detail)


def _decode_to_cache(job: VideoJob, jpgs_path: Path, index_path: Path) -> VideoScan:
    reader = VideoReader(job.path, sequence_fps=job.sequence_fps)
    fps, _ = resample_indices(reader.fps, job.target_fps)
    offset = job.offset if job.offset is not None else max(1, round(job.offset_seconds * fps))
    kept_k, kept_src, offsets = [], [], [0]
    num_frames = 0
    with atomic_path(jpgs_path) as tmp, open(tmp, "wb") as out:
        # Frame k is needed as a first frame (k % stride == 0) or as a second one (k - offset is one).
        for frame in reader.frames(job.target_fps):
            k = frame.index
            num_frames = k + 1
            if k % job.stride and (k < offset or (k - offset) % job.stride):
                continue
            data = encode_jpeg(resize_square(frame.rgb, job.size, job.resize_mode), job.quality)
            out.write(data)
            kept_k.append(k)
            kept_src.append(frame.source_index)
            offsets.append(offsets[-1] + len(data))
    starts = pair_frames(num_frames, offset, job.stride)
    if len(starts) == 0:
        raise VideoReadError("too short for the offset",
                             f"{num_frames} frames at {fps:g} fps, offset {offset} frames")
    ks = np.asarray(kept_k, dtype=np.int64)
    src = np.asarray(kept_src, dtype=np.int64)
    sizes = np.diff(np.asarray(offsets, dtype=np.int64))
    pos_t, pos_t1 = np.searchsorted(ks, starts), np.searchsorted(ks, starts + offset)
    actions, warning = _pair_actions(job, src[pos_t], src[pos_t1])
    meta = {"source": job.source, "num_frames": num_frames, "fps": fps, "offset": offset,
            "stride": job.stride, "warning": warning}
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ks=ks, src=src, offsets=np.asarray(offsets, dtype=np.int64),
                     actions=actions, meta=np.array(json.dumps(meta)))
    return VideoScan(job.index, ok=True, num_frames=num_frames, fps=fps, offset=offset,
                     pair_bytes=sizes[pos_t] + sizes[pos_t1], has_actions=len(actions) > 0,
                     warning=warning)


def _pair_actions(job: VideoJob, src_t: np.ndarray, src_t1: np.ndarray) -> tuple[np.ndarray, str]:
    """float32 [P, 7] pair actions from the sidecar, or [0, 7] and a warning when unavailable."""
    none = np.zeros((0, 7), dtype=np.float32)
    if job.sidecar is None:
        return none, ""
    if not Path(job.sidecar).is_file():
        return none, "no sidecar file"
    try:
        actions = load_sidecar_actions(job.sidecar)
        return np.stack([pair_action(actions, int(a), int(b)) for a, b in zip(src_t, src_t1)]), ""
    except (ValueError, OSError) as err:
        return none, f"bad sidecar: {err}"


def _load_scan(job: VideoJob, index_path: Path) -> VideoScan | None:
    """A complete cache entry of the same video, or None (then the video is decoded again)."""
    try:
        entry = CacheEntry(job.cache_dir, job.index)
    except (OSError, ValueError, KeyError):
        return None
    if entry.meta.get("source") != job.source:
        return None
    meta = entry.meta
    starts = pair_frames(meta["num_frames"], meta["offset"], job.stride)
    return VideoScan(job.index, ok=True, num_frames=meta["num_frames"], fps=meta["fps"],
                     offset=meta["offset"], pair_bytes=entry.pair_sizes(starts),
                     has_actions=len(entry.actions) > 0, warning=meta.get("warning", ""))


class CacheEntry:
    """Read access to one video's cached frames (phase 2): JPEG bytes of pair p by byte offsets."""

    def __init__(self, cache_dir: str | Path, index: int) -> None:
        self.jpgs_path, index_path = _paths(cache_dir, index)
        with np.load(index_path, allow_pickle=False) as data:
            self.ks, self.src, self.offsets = data["ks"], data["src"], data["offsets"]
            self.actions = data["actions"]
            self.meta = json.loads(str(data["meta"]))
        if not self.jpgs_path.exists() or self.jpgs_path.stat().st_size != self.offsets[-1]:
            raise ValueError(f"{self.jpgs_path}: missing or incomplete")

    def _position(self, k: int) -> int:
        pos = int(np.searchsorted(self.ks, k))
        if pos >= len(self.ks) or self.ks[pos] != k:
            raise KeyError(f"frame {k} is not in the cache of {self.meta['source']}")
        return pos

    def pair_sizes(self, starts: np.ndarray) -> np.ndarray:
        sizes = np.diff(self.offsets)
        return (sizes[np.searchsorted(self.ks, starts)]
                + sizes[np.searchsorted(self.ks, starts + self.meta["offset"])])

    def read_pair(self, stream, k: int) -> tuple[bytes, bytes, int, int]:
        """(t.jpg, t1.jpg, source frame of t, source frame of t1) of the pair starting at frame k."""
        out = []
        for pos in (self._position(k), self._position(k + self.meta["offset"])):
            stream.seek(int(self.offsets[pos]))
            out.append(stream.read(int(self.offsets[pos + 1] - self.offsets[pos])))
            out.append(int(self.src[pos]))
        return out[0], out[2], out[1], out[3]
