"""`lapa sim eval policy=NAME episodes=N output=DIR`: closed-loop success rates in the simulated world.

Runs N episodes of every task family (seeds `seed + i`, the same scenes for every policy, disjoint from
`sim generate`'s default seeds) with the policy `lapa.policy.get_policy(NAME)` builds: a registered name
(`oracle`, `random`, registered by `lapa.sim`) or an export directory whose kind has a registered loader.
Writes `DIR/metrics.json` with per-family and overall success rates, Wilson 95% confidence intervals and
every episode, `DIR/report.md` (`eval.policy_report`: the table, filmstrips of rollouts, GIFs of the first
success and failure, the policy's description), prints a table, and keeps the videos of the first
`videos_per_task` successes and the first `videos_per_task` failures of each family as
`DIR/videos/<family>_<i>.mp4`.

Seeds: `seed + i` for episode i of every family. An exported policy's demonstrations (the episode ids in
its info.json, as `lapa sim generate` names them) must not use any of those seeds: a policy evaluated on
the scenes it was trained on would measure memory, not skill; the command refuses (exit 2) with both
ranges.

It lives in `eval/`, above the simulator it drives: the simulator knows no learned policy, and any
policy evaluation can reuse the statistics (`lapa.eval.metrics.wilson_interval`).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.config import ConfigError, require, to_dict
from lapa.eval.metrics import wilson_interval
from lapa.eval.policy_report import choose_videos, filmstrip, read_frames, write_gif, write_report
from lapa.io import write_json_atomic
from lapa.policy import Policy, UnknownPolicyError, get_policy, registered
from lapa.sim.config import SimConfig
from lapa.sim.generate import seed_of_episode_id
from lapa.sim.parallel import process_world, run_episodes
from lapa.sim.policies import OracleConfig
from lapa.sim.rollout import run_episode
from lapa.sim.tasks import FAMILIES
from lapa.sim.video import write_mp4


@dataclass
class SimEvalConfig:
    """Settings of `lapa sim eval` (conf/sim_eval.yaml)."""

    policy: str = "oracle"  # a registered policy name (oracle | random) or an export directory
    output: str = ""  # DIR (required)
    episodes: int = 20  # per task family
    seed: int = 1_000_000
    tasks: list[str] = field(default_factory=lambda: list(FAMILIES))
    max_steps: int = 80
    workers: int = 1  # worker processes; 0 = in-process
    videos_per_task: int = 2
    sim: SimConfig = field(default_factory=SimConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)  # used when policy=oracle

    def __post_init__(self) -> None:
        require(bool(self.policy), "policy", self.policy, f"set policy to one of {registered()} or a directory")
        require(bool(self.output), "output", self.output, "set output=DIR")
        require(self.episodes >= 1, "episodes", self.episodes, "must be >= 1")
        bad = [t for t in self.tasks if t not in FAMILIES]
        require(bool(self.tasks) and not bad, "tasks", self.tasks, f"must be a non-empty subset of {list(FAMILIES)}")
        require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        require(self.workers >= 0, "workers", self.workers, "must be >= 0")
        require(self.videos_per_task >= 0, "videos_per_task", self.videos_per_task, "must be >= 0")


# One policy per worker process (an exported model loads once), rebuilt when an evaluation of another
# policy runs in the same process (workers=0 runs every evaluation in the caller's process).
_POLICY: tuple[tuple, Policy] | None = None


def _process_policy(cfg: SimEvalConfig) -> Policy:
    global _POLICY
    key = (cfg.policy, cfg.oracle, cfg.sim)
    if _POLICY is None or _POLICY[0] != key:
        _POLICY = key, get_policy(cfg.policy, oracle=cfg.oracle, sim=cfg.sim)
    return _POLICY[1]


def _eval_one(job: tuple[str, int, int, SimEvalConfig]) -> dict:
    """Worker: one episode of `family`; writes its video and filmstrip (the parent keeps a few of them)."""
    family, i, seed, cfg = job
    record = cfg.videos_per_task > 0
    ep = run_episode(process_world(cfg.sim), family, seed, _process_policy(cfg), cfg.max_steps, record=record)
    video = strip = None
    if record:
        video, strip = f"videos/{family}_{i}.mp4", f"videos/{family}_{i}.png"
        write_mp4(Path(cfg.output) / video, ep.frames, fps=cfg.sim.control_hz)
        filmstrip(ep.frames).save(Path(cfg.output) / strip)
    return {"family": family, "index": i, "seed": seed, "success": ep.success, "steps": ep.steps,
            "instruction": ep.instruction, "video": video, "filmstrip": strip}


def _keep_some_videos(cfg: SimEvalConfig, episodes: list[dict]) -> None:
    """Keep the videos (and filmstrips) of the first successes and failures of each family, delete the
    rest; a GIF of the first kept success and of the first kept failure for the report."""
    out = Path(cfg.output)
    keep = choose_videos(episodes, cfg.videos_per_task)
    gifs: set[bool] = set()
    for j, ep in enumerate(episodes):
        if ep["video"] is None:
            continue
        if j not in keep:
            for key in ("video", "filmstrip"):
                (out / ep[key]).unlink(missing_ok=True)
                ep[key] = None
        elif bool(ep["success"]) not in gifs:
            gifs.add(bool(ep["success"]))
            ep["gif"] = ep["video"].replace(".mp4", ".gif")
            write_gif(out / ep["gif"], read_frames(out / ep["video"]), fps=cfg.sim.control_hz)


def check_seeds_unseen(cfg: SimEvalConfig) -> None:
    """Refuse (ConfigError) an exported policy trained on any scene this evaluation would run: the
    episode ids of its demonstrations (info.json `training.demos.ids`, as `lapa sim generate` names them)
    give their world seeds."""
    path = Path(cfg.policy) / "info.json"
    if not path.is_file():
        return
    try:
        ids = ((json.loads(path.read_text()).get("training") or {}).get("demos") or {}).get("ids") or []
    except (OSError, ValueError, AttributeError):
        return  # not ours to judge: the policy's loader reports a broken export
    seen = {s for s in (seed_of_episode_id(str(i)) for i in ids) if s is not None}
    first, last = cfg.seed, cfg.seed + cfg.episodes - 1
    clash = sorted(s for s in seen if first <= s <= last)
    if clash:
        raise ConfigError(f"seed={cfg.seed}: evaluation seeds {first}..{last} include {len(clash)} seed(s) the "
                          f"policy was trained on (e.g. {clash[0]}, from its demonstrations' episode ids); "
                          f"choose a seed range outside {min(seen)}..{max(seen)}")


def _stats(records: list[dict]) -> dict:
    n, k = len(records), sum(r["success"] for r in records)
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
            "mean_steps": float(np.mean([r["steps"] for r in records])) if records else 0.0}


def format_table(results: dict) -> str:
    """Success rates per family and overall, with Wilson 95% intervals."""
    lines = [f"{'task':<10} {'success':>9} {'rate':>7}   95% CI", "-" * 42]
    rows = list(results["families"].items()) + [("overall", results["overall"])]
    for name, s in rows:
        lo, hi = s["ci95"]
        lines.append(f"{name:<10} {s['successes']:>4}/{s['episodes']:<4} {100 * s['success_rate']:>6.1f}%"
                     f"   [{100 * lo:.1f}, {100 * hi:.1f}]")
    return "\n".join(lines)


def evaluate(cfg: SimEvalConfig) -> dict:
    """Run the evaluation and return the results dict (also written to DIR/results.json)."""
    policy = get_policy(cfg.policy, oracle=cfg.oracle, sim=cfg.sim)  # fail fast (unknown policy) before workers
    check_seeds_unseen(cfg)
    jobs = [(family, i, cfg.seed + i, cfg) for family in cfg.tasks for i in range(cfg.episodes)]
    t0 = time.perf_counter()
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in run_episodes(_eval_one, jobs, cfg.workers, f"eval {cfg.policy}"):
        by_family[r["family"]].append(r)
    episodes = [r for f in cfg.tasks for r in sorted(by_family[f], key=lambda r: r["index"])]
    results = {
        "policy": cfg.policy, "episodes_per_task": cfg.episodes,
        "families": {f: _stats(by_family[f]) for f in cfg.tasks}, "overall": _stats(episodes),
        "seconds": round(time.perf_counter() - t0, 2),
        "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1],
        "episodes": episodes, "config": to_dict(cfg),
    }
    _keep_some_videos(cfg, episodes)
    results["videos"] = [r["video"] for r in episodes if r["video"]]
    info = getattr(policy, "info", None)
    write_json_atomic(Path(cfg.output) / "metrics.json", results)
    write_report(Path(cfg.output), results, info() if callable(info) else None)
    return results


def run(cfg: SimEvalConfig) -> int:
    """Closed-loop success rates: `episodes` rollouts per task family of policy=NAME (a registered name:
    oracle, random; or an exported policy directory); writes output=DIR/metrics.json (rates with Wilson
    95% intervals), DIR/report.md and DIR/videos/, prints a table.
    """
    print(f"lapa sim eval: policy={cfg.policy}, {cfg.episodes} episodes x {len(cfg.tasks)} tasks -> {cfg.output}")
    try:
        results = evaluate(cfg)
    except UnknownPolicyError as err:
        print(f"lapa sim eval: {err}")
        return 2
    print(format_table(results))
    print(f"{results['seconds']:.1f} s; wrote {cfg.output}/metrics.json, report.md and {len(results['videos'])} videos")
    return 0
