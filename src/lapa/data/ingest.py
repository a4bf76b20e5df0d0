"""`lapa ingest`: videos and image-sequence folders -> frame-pair WebDataset shards.

Three phases, each restartable:
1. scan: worker processes decode every video once into a cache of resized JPEG frames
   (`lapa.data.frame_cache`), or record why it was skipped (empty, truncated, not a video, too short);
2. plan: every pair (t, t + offset) of every video, put in a seeded random order and cut into shards
   of at most `samples_per_shard` pairs and `max_shard_bytes` bytes, so every shard mixes videos;
3. write: worker processes assemble whole shards from the cache, each written atomically (`*.tmp`
   renamed when complete). Shards already present are skipped, which is what makes a re-run resume.

The same inputs, config and seed give byte-identical shards. A finished run writes
`output/ingest_summary.json`; a re-run of a finished job returns at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from lapa.config import require, require_path, to_dict
from lapa.data.frame_cache import CacheEntry, VideoJob, VideoScan, pair_frames, scan_video
from lapa.data.images import RESIZE_MODES
from lapa.data.manifest import ManifestEntry, ManifestError, find_manifest, load_manifest
from lapa.data.shards import shard_name, write_shard
from lapa.data.video import VIDEO_EXTENSIONS, discover_videos
from lapa.io import write_json_atomic
from lapa.parallel import WorkerPool

log = logging.getLogger(__name__)

SUMMARY_NAME = "ingest_summary.json"
STATE_NAME = ".ingest_state.json"
CACHE_NAME = ".ingest_cache"
# Options that do not change the shards' content (a resumed run may change them).
_NOT_CONTENT = ("workers", "progress", "keep_cache")


@dataclass
class IngestConfig:
    """Options of `lapa ingest` (conf/ingest.yaml)."""

    input: str = MISSING  # folder of videos / image-sequence folders (searched recursively)
    output: str = MISSING  # folder for the shards, the summary and a temporary frame cache
    manifest: str | None = None  # CSV/JSONL {video, instruction}; default input/manifest.{jsonl,csv}
    sidecar: str | None = None  # folder of <video stem>.npz with `actions` -> KEY.action.npy
    offset: int | None = None  # frames between the two frames of a pair (at the target fps); null: offset_seconds
    offset_seconds: float | None = 0.3  # time between the two frames when offset is null: round(s * fps), >= 1
    stride: int = 1  # frames between the first frames of consecutive pairs of a video
    fps: float | None = None  # target frame rate; null keeps the native rate (never upsamples)
    sequence_fps: float = 10.0  # rate of image-sequence folders unless the manifest gives `fps`
    size: int = 256  # square output size
    resize_mode: str = "crop"  # to size x size: crop (shorter side, centre crop), pad (letterbox), squash
    jpeg_quality: int = 95  # of the frames written into the shards
    samples_per_shard: int = 1000  # pairs per shard at most
    max_shard_bytes: int = 1_500_000_000  # bytes per shard at most
    workers: int = -1  # decoding processes; -1 = every CPU, 0 or 1 = in this process
    prefix: str = "pairs"  # shard names: {prefix}-{index:06d}.tar
    seed: int = 0  # order of the pairs across shards
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))  # video files read
    keep_cache: bool = False  # keep the decoded frame cache after a complete run
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        require(self.offset is None or self.offset >= 1, "offset", self.offset,
                "must be >= 1 frame (or null: offset_seconds)")
        require(self.offset_seconds is None or self.offset_seconds > 0, "offset_seconds",
                self.offset_seconds, "must be > 0 (or null with offset set)")
        require(self.offset is not None or self.offset_seconds is not None, "offset", self.offset,
                "set offset (frames) or offset_seconds")
        require(self.stride >= 1, "stride", self.stride, "must be >= 1")
        require(self.fps is None or self.fps > 0, "fps", self.fps, "must be > 0 or null (native)")
        require(self.sequence_fps > 0, "sequence_fps", self.sequence_fps, "must be > 0")
        require(8 <= self.size <= 4096, "size", self.size, "must be in 8..4096")
        require(self.resize_mode in RESIZE_MODES, "resize_mode", self.resize_mode,
                f"must be one of {', '.join(RESIZE_MODES)}")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.samples_per_shard >= 1, "samples_per_shard", self.samples_per_shard, "must be >= 1")
        require(self.max_shard_bytes >= 1 << 16, "max_shard_bytes", self.max_shard_bytes,
                "must be >= 65536")
        require(self.workers >= -1, "workers", self.workers, "must be >= 0, or -1 for every CPU")
        require(bool(self.prefix) and not any(c in self.prefix for c in "/\\.{}*?"), "prefix",
                self.prefix, "must be a non-empty name without / \\ . { } * ?")
        require(len(self.extensions) > 0, "extensions", self.extensions, "must list >= 1 extension")

    def check_inputs(self) -> None:
        """The input folders and files exist (run by `lapa` before anything is created)."""
        require_path("input", self.input, "dir", "a folder of videos / image-sequence folders")
        if self.manifest is not None:
            require_path("manifest", self.manifest, "file", "a CSV or JSONL manifest")
        if self.sidecar is not None:
            require_path("sidecar", self.sidecar, "dir", "a folder of <video stem>.npz action files")


@dataclass(frozen=True)
class VideoInfo:
    """What a pair's json and txt record about its video (sent once to each writer process)."""

    video_id: str
    source: str
    instruction: str | None
    task: str | None


def run(cfg: IngestConfig) -> int:
    """Turn videos / image folders into frame-pair shards; 0 on success, 1 when nothing was ingested.

    Example: `lapa ingest input=videos/ output=data/frames/train fps=10 offset_seconds=0.3 workers=4`.
    """
    start = time.time()
    out = Path(cfg.output)
    if not Path(cfg.input).is_dir():
        log.error("input=%s is not a folder", cfg.input)
        return 2
    fingerprint = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_CONTENT}
    done = _finished_summary(out, fingerprint)
    if done is not None:
        print(f"ingest: {out} is already complete ({done['pairs_written']} pairs in "
              f"{done['shards_written']} shards); nothing to do")
        return 0
    if not _claim_output(out, fingerprint):
        return 2
    try:
        jobs, infos = _video_jobs(cfg)
    except ManifestError as err:
        log.error("%s", err)
        return 2
    workers = _num_workers(cfg.workers, len(jobs))
    print(f"ingest: {len(jobs)} videos from {cfg.input} -> {out} ({max(workers, 1)} worker(s))")

    # One pool for both phases: worker start-up is paid once. 0 or 1 worker runs in this process.
    with WorkerPool(workers if workers > 1 else 0) as pool:
        scans = list(pool.map(scan_video, jobs, desc="decode videos", progress=cfg.progress))
        t_scan = time.time() - start
        shards = plan_shards(scans, cfg)
        paths = [out / shard_name(cfg.prefix, i) for i in range(len(shards))]
        cache_dir = str(out / CACHE_NAME)
        todo = [ShardJob(str(p), entries, cache_dir, {v: infos[v] for _, v, _ in entries}, cfg.resize_mode)
                for p, entries in zip(paths, shards) if not p.exists()]
        list(pool.map(_write_pair_shard, todo, desc="write shards", progress=cfg.progress))

    seconds = time.time() - start
    summary = _summary(cfg, jobs, scans, shards, len(shards) - len(todo), workers,
                       seconds, t_scan, fingerprint)
    write_json_atomic(out / SUMMARY_NAME, summary)
    if not cfg.keep_cache:
        shutil.rmtree(out / CACHE_NAME, ignore_errors=True)
    _print_summary(summary, out)
    return 0 if summary["pairs_written"] > 0 else 1


def _video_jobs(cfg: IngestConfig) -> tuple[list[VideoJob], dict[int, VideoInfo]]:
    """One job per discovered video (plus manifest entries missing on disk, to report them)."""
    root = Path(cfg.input).resolve()
    manifest_path = Path(cfg.manifest) if cfg.manifest else find_manifest(root)
    manifest = load_manifest(manifest_path) if manifest_path else {}
    paths = discover_videos(root, cfg.extensions)
    known = {p.resolve() for p in paths}
    paths += sorted(p for p in manifest if p not in known)  # reported as "missing file"
    jobs, infos = [], {}
    for index, path in enumerate(paths):
        path = path.resolve()
        source = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        entry = manifest.get(path, ManifestEntry())
        name = path.name if path.is_dir() else path.stem
        sidecar = str(Path(cfg.sidecar) / f"{name}.npz") if cfg.sidecar else None
        video_id = source if path.is_dir() else source[: -len(path.suffix)]
        jobs.append(VideoJob(index, str(path), source, entry.fps or cfg.sequence_fps, cfg.fps,
                             cfg.offset, cfg.offset_seconds, cfg.stride, cfg.size, cfg.resize_mode,
                             cfg.jpeg_quality, sidecar, str(Path(cfg.output) / CACHE_NAME)))
        infos[index] = VideoInfo(video_id, source, entry.instruction, entry.task)
    return jobs, infos


def plan_shards(scans: list[VideoScan], cfg: IngestConfig) -> list[list[tuple[int, int, int]]]:
    """Cut all pairs, in a seeded random order, into shards of (global position, video, start frame).

    A shard closes at `samples_per_shard` pairs or before its JPEG bytes would pass `max_shard_bytes`.
    Pair order depends only on the scans and the seed, so the plan (and the shards) are reproducible.
    """
    vids, starts, sizes = [], [], []
    for scan in scans:
        if scan.ok:
            frames = pair_frames(scan.num_frames, scan.offset, cfg.stride)
            vids.append(np.full(len(frames), scan.index, dtype=np.int64))
            starts.append(frames)
            sizes.append(scan.pair_bytes)
    if not vids:
        return []
    vid, start, size = (np.concatenate(a) for a in (vids, starts, sizes))
    order = np.random.default_rng(cfg.seed).permutation(len(vid))
    shards: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    current_bytes = 0
    for position, i in enumerate(order):
        pair_bytes = int(size[i]) + 512  # + json, txt and tar headers
        if current and (len(current) >= cfg.samples_per_shard
                        or current_bytes + pair_bytes > cfg.max_shard_bytes):
            shards.append(current)
            current, current_bytes = [], 0
        current.append((position, int(vid[i]), int(start[i])))
        current_bytes += pair_bytes
    shards.append(current)
    return shards


# ---- phase 3: shard writer (runs in worker processes) ---------------------------------------------
@dataclass(frozen=True)
class ShardJob:
    path: str
    entries: list[tuple[int, int, int]]  # (global position, video index, start frame), in shard order
    cache_dir: str
    infos: dict[int, VideoInfo]  # of the videos in this shard
    resize_mode: str  # recorded in every pair's json


def _write_pair_shard(job: ShardJob) -> int:
    """Write one shard from the frame cache. Reads grouped by video, writes in the planned order."""
    samples: dict[int, dict] = {}
    by_video: dict[int, list[tuple[int, int]]] = {}
    for position, vid, k in job.entries:
        by_video.setdefault(vid, []).append((position, k))
    for vid, items in by_video.items():
        cache, info = CacheEntry(job.cache_dir, vid), job.infos[vid]
        offset = cache.meta["offset"]
        with open(cache.jpgs_path, "rb") as stream:
            for position, k in items:
                t_jpg, t1_jpg, src_t, src_t1 = cache.read_pair(stream, k)
                meta = {"video_id": info.video_id, "frame_idx": k, "frame_idx_t1": k + offset,
                        "offset": offset, "fps": cache.meta["fps"], "source": info.source,
                        "src_frame_t": src_t, "src_frame_t1": src_t1, "resize_mode": job.resize_mode}
                if info.task is not None:
                    meta["task"] = info.task
                sample = {"__key__": f"{position:09d}", "t.jpg": t_jpg, "t1.jpg": t1_jpg, "json": meta}
                if info.instruction is not None:
                    sample["txt"] = info.instruction
                if len(cache.actions):
                    sample["action.npy"] = cache.actions[k // cache.meta["stride"]]  # pair index
                samples[position] = sample
    return write_shard(job.path, (samples[p] for p, _, _ in job.entries))


# ---- helpers ----------------------------------------------------------------------------------------
def _num_workers(requested: int, num_jobs: int) -> int:
    count = (os.cpu_count() or 1) if requested == -1 else requested
    return max(0, min(count, num_jobs))


def _claim_output(out: Path, fingerprint: dict) -> bool:
    """Record the config in the output; refuse an output holding shards of a different config."""
    state = out / STATE_NAME
    if state.exists():
        previous = json.loads(state.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint)
                             if previous.get(k) != fingerprint.get(k))
            log.error("output=%s holds an ingest with different options (%s); use a new output folder "
                      "or delete it", out, ", ".join(changed))
            return False
    write_json_atomic(state, fingerprint)
    return True


def _finished_summary(out: Path, fingerprint: dict) -> dict | None:
    path = out / SUMMARY_NAME
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    complete = summary.get("config") == fingerprint and all(
        (out / name).exists() for name in summary.get("shards", []))
    return summary if complete else None


def _summary(cfg, jobs, scans, shards, resumed, workers, seconds, t_scan, fingerprint) -> dict:
    skipped = [{"video": jobs[s.index].source, "reason": s.reason, "detail": s.detail}
               for s in scans if not s.ok]
    warnings = Counter(s.warning.split(":")[0] for s in scans if s.ok and s.warning)
    pairs = sum(len(s) for s in shards)
    return {
        "input": str(cfg.input), "output": str(cfg.output),
        "videos_found": len(jobs), "videos_read": sum(s.ok for s in scans),
        "videos_skipped": len(skipped), "skip_reasons": dict(Counter(s["reason"] for s in skipped)),
        "skipped": skipped, "warnings": dict(warnings),
        "pairs_written": pairs, "pairs_with_action": sum(s.num_pairs for s in scans if s.has_actions),
        "shards_written": len(shards), "shards_resumed": resumed,
        "shards": [shard_name(cfg.prefix, i) for i in range(len(shards))],
        "seconds": round(seconds, 3), "decode_seconds": round(t_scan, 3), "workers": max(workers, 1),
        "pairs_per_second_per_worker": round(pairs / max(seconds, 1e-9) / max(workers, 1), 2),
        "config": fingerprint,
    }


def _print_summary(summary: dict, out: Path) -> None:
    reasons = ", ".join(f"{n} {r}" for r, n in summary["skip_reasons"].items()) or "none"
    print(f"ingest: read {summary['videos_read']}/{summary['videos_found']} videos, skipped "
          f"{summary['videos_skipped']} ({reasons}); wrote {summary['pairs_written']} pairs in "
          f"{summary['shards_written']} shards ({summary['shards_resumed']} already done) to {out} "
          f"in {summary['seconds']:.1f} s ({summary['pairs_per_second_per_worker']:.1f} pairs/s per "
          f"worker); summary: {out / SUMMARY_NAME}")
    for item in summary["skipped"]:
        print(f"  skipped {item['video']}: {item['reason']} ({item['detail']})")
