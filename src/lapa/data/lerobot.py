"""`lapa import-lerobot SRC OUTPUT`: a LeRobot dataset (v3.0 or v2.x, on local disk) -> robot-step shards.

Each frame of each chosen episode becomes one Stage 3 sample (DESIGN.md section 5):
    KEY.jpg          the camera's frame, resized to `size` x `size` (`resize_mode`, as `lapa ingest` does)
    KEY.txt          the task text (meta/tasks by the frame's task_index; `task=` overrides it)
    KEY.action.npy   float32 [7] (the action feature, or the 7 columns `action_dims` picks from it)
    KEY.json         {episode_id, step, task, source, dataset, episode_index, frame_index, timestamp,
                      task_index, fps, camera}
    KEY.state.npy    float32 [D] of `state_key` (optional), KEY.wrist.jpg of `wrist_camera` (optional)
KEY = `{name}-ep{episode:06d}_{step:06d}`; episode_id = `{name}-ep{episode:06d}` (name: the source folder's).

Episodes are written in index order by a rolling `ShardWriter` (every shard atomic). After each
finished shard `.import_state.json` records where the next one starts, so a killed run resumes there;
a run over a complete output returns at once; an output made with other options is refused. Frames
without a video frame within `tolerance_s`, or with a non-finite action, are skipped and counted;
an episode whose video or rows cannot be read is skipped with its reason. `import_summary.json` ends it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from lapa.config import require, to_dict
from lapa.data.images import RESIZE_MODES, encode_jpeg, resize_square
from lapa.data.lerobot_format import Episode, LeRobotDataset, LeRobotError
from lapa.data.shards import ShardWriter, shard_name
from lapa.data.video import VideoReadError
from lapa.io import remove_stale_temporaries, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_NAME = "import_summary.json"
STATE_NAME = ".import_state.json"


@dataclass
class ImportLeRobotConfig:
    """Options of `lapa import-lerobot` (conf/import_lerobot.yaml)."""

    src: str = MISSING  # the dataset's root folder (holds meta/info.json)
    output: str = MISSING  # folder for the shards and import_summary.json
    camera: str | None = None  # e.g. observation.images.front; null: the dataset's only camera
    wrist_camera: str | None = None  # optional second camera -> KEY.wrist.jpg
    action_key: str = "action"  # the action feature: 7 values [x y z roll pitch yaw gripper] per frame
    action_dims: list[int] | None = None  # 7 indices into a wider action, in x y z roll pitch yaw grip order
    state_key: str | None = "observation.state"  # -> KEY.state.npy; null: no state
    task: str | None = None  # fixed instruction for every frame; null: the dataset's task text
    size: int = 256  # square output size
    resize_mode: str = "crop"  # crop (shorter side + centre crop), pad (letterbox) or squash
    jpeg_quality: int = 95  # of the written frames
    samples_per_shard: int = 1000  # frames per shard (episodes in index order)
    max_shard_bytes: int = 1_000_000_000  # a shard closes before it would pass this size
    episodes: list[int] | None = None  # episode indices to import; null: all
    max_episodes: int | None = None  # the first N (by index) of those
    name: str | None = None  # episode id prefix; null: the source folder's name
    prefix: str = "steps"  # shard names: {prefix}-{index:06d}.tar
    tolerance_s: float = 1e-4  # a frame's video frame must lie this close to its timestamp (LeRobot's)
    progress: bool = True  # a progress bar over the episodes

    def __post_init__(self) -> None:
        require(8 <= self.size <= 4096, "size", self.size, "must be in 8..4096")
        require(self.resize_mode in RESIZE_MODES, "resize_mode", self.resize_mode,
                f"must be one of {', '.join(RESIZE_MODES)}")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.samples_per_shard >= 1, "samples_per_shard", self.samples_per_shard, "must be >= 1")
        require(self.max_shard_bytes >= 1 << 16, "max_shard_bytes", self.max_shard_bytes, "must be >= 65536")
        require(self.max_episodes is None or self.max_episodes >= 1, "max_episodes", self.max_episodes,
                "must be >= 1 or null")
        require(self.action_dims is None or len(self.action_dims) == 7, "action_dims", self.action_dims,
                "must list 7 indices (x y z roll pitch yaw gripper) or be null")
        require(self.tolerance_s > 0, "tolerance_s", self.tolerance_s, "must be > 0")
        require(bool(self.prefix) and not any(c in self.prefix for c in "/\\.{}*?"), "prefix", self.prefix,
                "must be a non-empty name without / \\ . { } * ?")

    def check_inputs(self) -> None:
        """The source is a LeRobot dataset folder (run by `lapa` before anything is created)."""
        require(Path(self.src).is_dir(), "src", self.src, "is not a folder (expected a LeRobot dataset)")
        require((Path(self.src) / "meta" / "info.json").is_file(), "src", self.src,
                "has no meta/info.json (not a LeRobot dataset)")


@dataclass(frozen=True)
class Plan:
    """What the import reads, checked against the dataset before anything is written."""

    camera: str
    wrist: str | None
    action_width: int  # values per frame of the action feature
    action_dims: list[int]
    action_names: list[str]
    state_width: int | None
    episodes: list[Episode]
    name: str


def run(cfg: ImportLeRobotConfig) -> int:
    """Import a LeRobot dataset as robot-step shards; 0 on success, 1 when nothing was written, 2 on a
    dataset that lacks what the options name (one line saying what exists).

    Example: `lapa import-lerobot ~/lerobot/pusht data/demos/train camera=observation.images.top size=224`.
    """
    start = time.time()
    out = Path(cfg.output)
    try:
        dataset = LeRobotDataset(cfg.src)
        plan = make_plan(dataset, cfg)
    except LeRobotError as err:
        log.error("import-lerobot: %s", err)
        return 2
    fingerprint = {"config": {k: v for k, v in to_dict(cfg).items() if k != "progress"},
                   "source": {"version": dataset.version, "episodes": len(dataset.episodes),
                              "frames": dataset.info.get("total_frames")}}
    summary_path = out / SUMMARY_NAME
    if summary_path.is_file():
        done = json.loads(summary_path.read_text())
        if done.get("fingerprint") == fingerprint and all((out / s).exists() for s in done.get("shards", [])):
            print(f"import-lerobot: {out} is already complete ({done['steps_written']} steps in "
                  f"{len(done['shards'])} shards); nothing to do")
            return 0
    state = _claim_output(out, fingerprint)
    if state is None:
        return 2
    print(f"import-lerobot: {len(plan.episodes)} episodes of {cfg.src} (LeRobot {dataset.version}, camera "
          f"{plan.camera}) -> {out}")
    resumed_at = state["next_shard"]
    skipped, episodes_skipped = Counter(state["steps_skipped"]), list(state["episodes_skipped"])
    written = state["steps_written"]
    first_pos, first_row = state["episode_pos"], state["row"]
    cache: dict = {}
    with ShardWriter(out, prefix=cfg.prefix, max_count=cfg.samples_per_shard, max_bytes=cfg.max_shard_bytes,
                     start_index=resumed_at) as writer:
        for pos in _progress(range(first_pos, len(plan.episodes)), cfg.progress, len(plan.episodes), first_pos):
            episode = plan.episodes[pos]
            try:
                rows = episode_samples(dataset, plan, episode, cfg, cache)
            except VideoReadError as err:
                episodes_skipped.append({"episode": episode.index, "reason": err.reason, "detail": err.detail})
                log.warning("import-lerobot: skipped episode %d (%s: %s)", episode.index, err.reason, err.detail)
                continue
            for row, sample, reason in rows:
                if pos == first_pos and row < first_row:  # in the shards of the interrupted run
                    continue
                if sample is None:
                    skipped[reason] += 1
                    continue
                shards_before = len(writer.written)
                writer.write(sample)
                if len(writer.written) > shards_before:  # a shard was completed before this sample
                    write_json_atomic(out / STATE_NAME, {
                        "fingerprint": fingerprint, "next_shard": writer.index, "episode_pos": pos, "row": row,
                        "steps_written": written, "steps_skipped": dict(skipped),
                        "episodes_skipped": episodes_skipped})
                written += 1
    shards = [shard_name(cfg.prefix, i) for i in range(writer.index)]
    for stale in set(out.glob(f"{cfg.prefix}-*.tar")) - {out / s for s in shards}:  # of an earlier, larger run
        stale.unlink()
    summary = {"src": str(cfg.src), "output": str(out), "version": dataset.version, "fps": dataset.fps,
               "camera": plan.camera, "wrist_camera": plan.wrist, "action_names": plan.action_names,
               "episodes_selected": len(plan.episodes), "episodes_skipped": episodes_skipped,
               "steps_written": written, "steps_skipped": dict(skipped), "shards": shards,
               "shards_resumed": resumed_at, "seconds": round(time.time() - start, 3), "fingerprint": fingerprint}
    write_json_atomic(summary_path, summary)
    _print_summary(summary, out)
    return 0 if written else 1


def make_plan(dataset: LeRobotDataset, cfg: ImportLeRobotConfig) -> Plan:
    """Check every key the options name against the dataset; LeRobotError (one line) otherwise."""
    camera = dataset.camera(cfg.camera)
    wrist = dataset.camera(cfg.wrist_camera, "wrist_camera") if cfg.wrist_camera else None
    width, names = dataset.vector(cfg.action_key, "action_key")
    if cfg.action_dims is None:
        if width != 7:
            raise LeRobotError(f"action_key={cfg.action_key}: {width} values per frame ({', '.join(names)}), not "
                               f"7; pick x y z roll pitch yaw gripper with action_dims=[...] (indices 0..{width - 1})")
        dims = list(range(7))
    else:
        dims = [int(d) for d in cfg.action_dims]
        if not all(0 <= d < width for d in dims):
            raise LeRobotError(f"action_dims={dims}: indices must be in 0..{width - 1} "
                               f"({cfg.action_key} holds {', '.join(names)})")
    state_width = dataset.vector(cfg.state_key, "state_key")[0] if cfg.state_key else None
    episodes = dataset.episodes
    if cfg.episodes is not None:
        known = {e.index for e in episodes}
        unknown = [i for i in cfg.episodes if i not in known]
        if unknown:
            raise LeRobotError(f"episodes={list(cfg.episodes)}: no episode(s) {unknown}; the dataset has "
                               f"{len(known)} ({min(known, default=0)}..{max(known, default=-1)})")
        wanted = set(cfg.episodes)
        episodes = [e for e in episodes if e.index in wanted]
    episodes = episodes[:cfg.max_episodes] if cfg.max_episodes else episodes
    if cfg.task is None and not dataset.tasks and not any(e.tasks for e in episodes):
        raise LeRobotError(f"task=null: {cfg.src} has no task text (meta/tasks.parquet); set task='...'")
    if episodes and episodes[0].data_file.is_file():  # the columns the features promise
        import pyarrow.parquet as pq

        columns = pq.read_schema(episodes[0].data_file).names
        needed = [cfg.action_key] + ([cfg.state_key] if cfg.state_key else [])
        needed += [c for c in (camera, wrist) if c and dataset.features[c]["dtype"] == "image"]  # in the rows
        missing = [k for k in needed if k not in columns]
        if missing:
            raise LeRobotError(f"{episodes[0].data_file.relative_to(dataset.root)} has no column {missing[0]}; "
                               f"it has {columns}")
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", cfg.name or Path(cfg.src).resolve().name) or "lerobot"
    return Plan(camera, wrist, width, dims, [names[d] for d in dims], state_width, episodes, name)


def episode_samples(dataset: LeRobotDataset, plan: Plan, episode: Episode, cfg: ImportLeRobotConfig,
                    cache: dict | None = None) -> list[tuple[int, dict | None, str | None]]:
    """(row, sample, None) or (row, None, skip reason) for each of an episode's frames, in frame order.
    VideoReadError when its rows or video cannot be read. `cache` keeps the last data parquet read (v3
    files hold many consecutive episodes)."""
    if not episode.data_file.is_file():
        raise VideoReadError("missing data file", str(episode.data_file.relative_to(dataset.root)))
    cameras = [c for c in (plan.camera, plan.wrist) if c]
    columns = ["episode_index", "frame_index", "timestamp", "task_index", cfg.action_key, *cameras]
    columns += [cfg.state_key] if cfg.state_key else []
    cache = {} if cache is None else cache
    if cache.get("path") != episode.data_file:
        cache.update(path=episode.data_file, table=dataset.read_rows(episode.data_file, columns))
    table = cache["table"]
    rows = np.nonzero(table.column("episode_index").to_numpy() == episode.index)[0]
    if len(rows) == 0:
        raise VideoReadError("no rows", f"{episode.data_file.name} holds no row of episode {episode.index}")
    table = table.take(rows)
    names = table.column_names
    frame_index = table.column("frame_index").to_numpy() if "frame_index" in names else np.arange(len(rows))
    order = np.argsort(frame_index, kind="stable")
    table, frame_index = table.take(order), frame_index[order]
    timestamps = (table.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in names
                  else frame_index / dataset.fps)
    task_index = table.column("task_index").to_numpy() if "task_index" in names else np.full(len(rows), -1)
    actions = _vectors(table.column(cfg.action_key).to_pylist(), plan.action_width)
    state = _vectors(table.column(cfg.state_key).to_pylist(), plan.state_width) if cfg.state_key else None

    def convert(rgb: np.ndarray) -> bytes:
        return encode_jpeg(resize_square(rgb, cfg.size, cfg.resize_mode), cfg.jpeg_quality)

    frames = {}
    for key in cameras:
        if dataset.features[key]["dtype"] == "video":
            frames[key] = dataset.video_frames(episode, key, timestamps, cfg.tolerance_s, convert)
        else:
            frames[key] = dataset.image_frames(table.column(key).to_pylist(), convert)
    episode_id = f"{plan.name}-ep{episode.index:06d}"
    out = []
    for i in range(len(rows)):
        action = actions[i]
        if action is None or not np.isfinite(action[plan.action_dims]).all():
            out.append((i, None, "bad action"))
            continue
        if any(frames[key][i] is None for key in cameras):
            out.append((i, None, "no frame"))
            continue
        t_index = int(task_index[i])
        text = cfg.task or dataset.tasks.get(t_index) or (episode.tasks[0] if episode.tasks else None)
        if text is None:
            out.append((i, None, "no task text"))
            continue
        step = int(frame_index[i])
        sample = {"__key__": f"{episode_id}_{step:06d}", "jpg": frames[plan.camera][i], "txt": text,
                  "action.npy": action[plan.action_dims].astype(np.float32),
                  "json": {"episode_id": episode_id, "step": step, "task": text, "source": "lerobot",
                           "dataset": str(cfg.src), "episode_index": episode.index, "frame_index": step,
                           "timestamp": float(timestamps[i]), "task_index": t_index, "fps": dataset.fps,
                           "camera": plan.camera}}
        if state is not None and state[i] is not None:
            sample["state.npy"] = state[i].astype(np.float32)
        if plan.wrist:
            sample["wrist.jpg"] = frames[plan.wrist][i]
        out.append((i, sample, None))
    return out


# ---- helpers ---------------------------------------------------------------------------------------------------
def _vectors(cells: list, width: int | None) -> list[np.ndarray | None]:
    """float64 vectors of a parquet column (lists, or scalars); None for a null cell or a wrong width."""
    out: list[np.ndarray | None] = []
    for cell in cells:
        if cell is None:
            out.append(None)
            continue
        try:
            vector = np.asarray(cell, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            out.append(None)
            continue
        out.append(vector if width is None or len(vector) == width else None)
    return out


def _claim_output(out: Path, fingerprint: dict) -> dict | None:
    """The resume state of `out` (a fresh one if none); None (logged) if `out` holds another import."""
    path = out / STATE_NAME
    fresh = {"fingerprint": fingerprint, "next_shard": 0, "episode_pos": 0, "row": 0, "steps_written": 0,
             "steps_skipped": {}, "episodes_skipped": []}
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("fingerprint") != fingerprint:
            old, new = state.get("fingerprint", {}).get("config", {}), fingerprint["config"]
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            log.error("import-lerobot: output=%s holds an import with other options (%s); use a new output folder "
                      "or delete it", out, ", ".join(changed) or "the source changed")
            return None
        remove_stale_temporaries(out)
        if state["next_shard"]:
            print(f"import-lerobot: resuming at shard {state['next_shard']} ({state['steps_written']} steps done)")
        return state
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_json_atomic(path, fresh)
    return fresh


def _progress(items: range, enabled: bool, total: int, initial: int):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, initial=initial, desc="import episodes", unit="episode")


def _print_summary(summary: dict, out: Path) -> None:
    skips = ", ".join(f"{n} {r}" for r, n in summary["steps_skipped"].items()) or "none"
    print(f"import-lerobot: wrote {summary['steps_written']} steps of "
          f"{summary['episodes_selected'] - len(summary['episodes_skipped'])}/{summary['episodes_selected']} "
          f"episodes in {len(summary['shards'])} shards ({summary['shards_resumed']} already done) to {out} in "
          f"{summary['seconds']:.1f} s; skipped steps: {skips}; summary: {out / SUMMARY_NAME}")
    for item in summary["episodes_skipped"]:
        print(f"  skipped episode {item['episode']}: {item['reason']} ({item['detail']})")
