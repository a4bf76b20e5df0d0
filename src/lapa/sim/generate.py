"""`lapa sim generate output=DIR episodes=N`: scripted demonstrations from the simulated world.

Writes (docs/contracts.md, "Simulator output"):
    DIR/videos/{train,val}/<episode_id>.mp4 + manifest.jsonl   action-free videos (Stage 1/2 input)
    DIR/sidecar/<episode_id>.npz                                 ground truth, evaluation only
    DIR/demos/{train,val}/steps-*.tar                            robot-step shards (Stage 3 input)
    DIR/summary.json

`episodes` is the number of oracle episodes attempted, cycling over `tasks`. Only successful episodes
become data (videos, sidecars, demonstrations): a failed oracle episode's instruction does not describe
its video. Failures are counted in the summary (`keep_failures=true` keeps them, marked
`success: false` in the sidecar and manifest). Episode `i` uses seed `seed * 100003 + i` and goes to the
validation split when a generator seeded by (seed, i) draws below `val_fraction`, so splits depend on
seeds only, never on worker count or order.

Resumable: each finished episode leaves `DIR/.work/<episode_id>.json`; a rerun skips those episodes and
rebuilds manifests, shards and the summary from all of them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.config import require, to_dict
from lapa.data.images import encode_jpeg
from lapa.data.shards import ShardWriter, write_shard
from lapa.data.tar_reader import shard_samples
from lapa.io import atomic_path, write_json_atomic, write_text_atomic
from lapa.sim.config import SimConfig
from lapa.sim.parallel import process_world, run_episodes
from lapa.sim.policies import OracleConfig, ScriptedOracle
from lapa.sim.rollout import Episode, run_episode
from lapa.sim.tasks import FAMILIES
from lapa.sim.video import write_mp4

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    output: str = ""  # DIR (required)
    episodes: int = 20  # oracle episodes attempted
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: list(FAMILIES))
    val_fraction: float = 0.1
    max_steps: int = 80  # cap; oracle episodes take ~20-60 steps
    workers: int = 1  # worker processes; 0 = in-process
    keep_failures: bool = False
    jpeg_quality: int = 95
    shard_max_count: int = 1000  # robot steps per demo shard
    sim: SimConfig = field(default_factory=SimConfig)
    oracle: OracleConfig = field(default_factory=lambda: OracleConfig(noise=0.1))

    def __post_init__(self) -> None:
        require(bool(self.output), "output", self.output, "set output=DIR")
        require(self.episodes >= 1, "episodes", self.episodes, "must be >= 1")
        bad = [t for t in self.tasks if t not in FAMILIES]
        require(bool(self.tasks) and not bad, "tasks", self.tasks, f"must be a non-empty subset of {list(FAMILIES)}")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        require(self.max_steps >= 5, "max_steps", self.max_steps, "must be >= 5")
        require(self.workers >= 0, "workers", self.workers, "must be >= 0")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.shard_max_count >= 1, "shard_max_count", self.shard_max_count, "must be >= 1")


def episode_seed(seed: int, index: int) -> int:
    """The world seed of episode `index` of a run with `seed` (runs with seeds < 10 never reach the
    evaluation seeds, 1,000,000 and up, below 100,000 episodes)."""
    return seed * 100003 + index


def seed_of_episode_id(episode_id: str) -> int | None:
    """The world seed of an episode id this command writes (`ep{index:06d}-s{seed}-{family}`); None for
    ids in any other form (e.g. imported datasets)."""
    match = re.match(r"^ep(\d+)-s(\d+)-", episode_id)
    return episode_seed(int(match.group(2)), int(match.group(1))) if match else None


def episode_plan(cfg: GenerateConfig) -> list[dict]:
    """Per episode: index, id, family, seed, split (a pure function of the config)."""
    plan = []
    for i in range(cfg.episodes):
        family = cfg.tasks[i % len(cfg.tasks)]
        split = "val" if np.random.default_rng([cfg.seed, i, 1]).random() < cfg.val_fraction else "train"
        plan.append({"index": i, "episode_id": f"ep{i:06d}-s{cfg.seed}-{family}", "family": family,
                     "seed": episode_seed(cfg.seed, i), "split": split})
    if cfg.val_fraction > 0 and cfg.episodes >= 2 and all(p["split"] == "train" for p in plan):
        plan[-1]["split"] = "val"  # a requested validation split is never empty
    return plan


def write_sidecar(path: Path, ep: Episode, episode_id: str, fps: int) -> None:
    """Ground truth of one episode: actions float32 [T-1, 7], states float32 [T, 14], metadata."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, actions=ep.actions.astype(np.float32), states=ep.states.astype(np.float32),
                 success=np.bool_(ep.success), instruction=np.str_(ep.instruction), task=np.str_(ep.family),
                 episode_id=np.str_(episode_id), seed=np.int64(ep.seed), fps=np.int64(fps))


def step_samples(ep: Episode, episode_id: str, quality: int):
    """Robot-step samples (Stage 3 format): frame t, instruction, action t, state t, for t < T-1; with
    the wrist camera on, also its frame t as `wrist.jpg`."""
    for t in range(ep.steps):
        sample = {"__key__": f"{episode_id}_{t:04d}", "jpg": encode_jpeg(ep.frames[t], quality),
                  "txt": ep.instruction, "action.npy": ep.actions[t].astype(np.float32),
                  "state.npy": ep.states[t].astype(np.float32),
                  "json": {"episode_id": episode_id, "step": t, "task": ep.family}}
        if ep.wrist_frames is not None:
            sample["wrist.jpg"] = encode_jpeg(ep.wrist_frames[t], quality)
        yield sample


def _generate_one(job: tuple[dict, GenerateConfig]) -> dict:
    """Worker: run one oracle episode and write its video, sidecar and steps; return its record."""
    item, cfg = job
    out, eid = Path(cfg.output), item["episode_id"]
    t0 = time.perf_counter()
    ep = run_episode(process_world(cfg.sim), item["family"], item["seed"], ScriptedOracle(cfg.oracle),
                     max_steps=cfg.max_steps)
    kept = ep.success or cfg.keep_failures
    if kept:
        write_mp4(out / "videos" / item["split"] / f"{eid}.mp4", ep.frames, fps=cfg.sim.control_hz)
        write_sidecar(out / "sidecar" / f"{eid}.npz", ep, eid, cfg.sim.control_hz)
        write_shard(out / ".work" / "steps" / f"{eid}.tar", step_samples(ep, eid, cfg.jpeg_quality))
    record = {**item, "instruction": ep.instruction, "success": ep.success, "kept": kept,
              "steps": ep.steps, "frames": ep.steps + 1, "seconds": time.perf_counter() - t0}
    write_json_atomic(out / ".work" / f"{eid}.json", record)  # last: marks the episode complete
    return record


def _read_tar_samples(path: Path):
    """Samples of a shard written by `write_shard`, in order; a damaged one raises (it is ours)."""
    def fail(err: Exception) -> None:
        raise err

    with open(path, "rb") as stream:
        for sample in shard_samples(stream, str(path), on_error=fail):
            sample.pop("__url__")
            yield sample


def _assemble(cfg: GenerateConfig, records: list[dict]) -> dict[str, int]:
    """Manifests and demo shards per split, from the finished episodes (index order)."""
    out = Path(cfg.output)
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        kept = [r for r in records if r["kept"] and r["split"] == split]
        rows = [json.dumps({"video": f"{r['episode_id']}.mp4", "instruction": r["instruction"],
                            "task": r["family"], "episode_id": r["episode_id"], "split": split,
                            "fps": cfg.sim.control_hz, "success": r["success"]}) for r in kept]
        write_text_atomic(out / "videos" / split / "manifest.jsonl", "".join(f"{row}\n" for row in rows))
        demo_dir = out / "demos" / split
        with ShardWriter(demo_dir, prefix="steps", max_count=cfg.shard_max_count) as writer:
            for r in kept:
                for sample in _read_tar_samples(out / ".work" / "steps" / f"{r['episode_id']}.tar"):
                    writer.write(sample)
        for stale in set(demo_dir.glob("steps-*.tar")) - set(writer.written):  # from an earlier, larger run
            stale.unlink()
        counts[split] = len(kept)
    return counts


def run(cfg: GenerateConfig) -> int:
    """Generate oracle episodes: action-free videos + manifest.jsonl per split (input of `lapa ingest`),
    evaluation-only sidecars (actions [T-1, 7], states [T, 14]), robot-step shards (Stage 3) and
    summary.json, under output=DIR. `episodes` are attempted (cycling over `tasks`); only successful ones
    become data unless keep_failures=true. Rerunning with the same output resumes.
    """
    out = Path(cfg.output)
    plan = episode_plan(cfg)
    done = {}
    for item in plan:
        marker = out / ".work" / f"{item['episode_id']}.json"
        if marker.exists():
            done[item["episode_id"]] = json.loads(marker.read_text())
    todo = [item for item in plan if item["episode_id"] not in done]
    print(f"lapa sim generate: {cfg.episodes} episodes ({len(done)} already done) -> {out}")
    t0 = time.perf_counter()
    for record in run_episodes(_generate_one, [(item, cfg) for item in todo], cfg.workers, "episodes"):
        done[record["episode_id"]] = record
    seconds = time.perf_counter() - t0
    records = [done[item["episode_id"]] for item in plan]
    counts = _assemble(cfg, records)
    per_family: dict[str, dict[str, int]] = defaultdict(lambda: {"episodes": 0, "successes": 0})
    for r in records:
        per_family[r["family"]]["episodes"] += 1
        per_family[r["family"]]["successes"] += int(r["success"])
    cores = max(1, min(cfg.workers, len(todo)))
    successes = sum(r["success"] for r in records)
    summary = {
        "episodes": len(records), "successes": successes, "success_rate": successes / len(records),
        "kept": counts, "per_family": dict(per_family),
        "steps": sum(r["steps"] for r in records), "mean_steps": float(np.mean([r["steps"] for r in records])),
        "generated_now": len(todo), "seconds": round(seconds, 2), "workers": cfg.workers,
        "episodes_per_min_per_core": round(len(todo) / max(seconds, 1e-9) * 60 / cores, 2) if todo else None,
        "config": to_dict(cfg),
    }
    write_json_atomic(out / "summary.json", summary)
    print(f"episodes {len(records)}  successes {successes} ({100 * summary['success_rate']:.1f}%)  "
          f"kept train {counts['train']} / val {counts['val']}  mean steps {summary['mean_steps']:.1f}")
    if todo:
        print(f"{seconds:.1f} s for {len(todo)} episodes: {summary['episodes_per_min_per_core']} episodes/min/core")
    print(f"wrote {out}/videos, {out}/sidecar, {out}/demos, {out}/summary.json")
    return 0
