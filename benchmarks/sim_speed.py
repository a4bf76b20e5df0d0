"""Simulator speed on one core: oracle episodes per minute, steps/s, and where the time goes.

Work: each control step = 1 IK solve + `physics_hz / control_hz` physics substeps + 1 TinyRenderer
frame (image_size^2 pixels, plus a shadow pass when shadows are on). Target (issue 4): >= 20 oracle
episodes of 50 steps per minute per core at 128 px.

    python benchmarks/sim_speed.py [--episodes 8] [--sizes 64 128 256] [--no-shadows]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from lapa.sim.config import SimConfig  # noqa: E402
from lapa.sim.policies import OracleConfig, ScriptedOracle  # noqa: E402
from lapa.sim.rollout import run_episode  # noqa: E402
from lapa.sim.tasks import FAMILIES  # noqa: E402
from lapa.sim.world import TabletopWorld  # noqa: E402


class TimedWorld(TabletopWorld):
    """Accumulates seconds spent in rendering, physics substeps, IK and scene rebuilds."""

    def __init__(self, cfg: SimConfig) -> None:
        super().__init__(cfg)
        self.t = {"render": 0.0, "physics": 0.0, "ik": 0.0, "reset": 0.0}
        step = self.p.stepSimulation

        def timed_step(*args, **kwargs):
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            self.t["physics"] += time.perf_counter() - t0
            return out

        self.p = _Proxy(self.p, timed_step)

    def render(self, wrist: bool = False) -> np.ndarray:
        t0 = time.perf_counter()
        out = super().render(wrist)
        self.t["render"] += time.perf_counter() - t0
        return out

    def _apply_targets(self) -> None:
        t0 = time.perf_counter()
        super()._apply_targets()
        self.t["ik"] += time.perf_counter() - t0

    def reset(self, scene):
        before = dict(self.t)  # a reset's settle steps and first frame count as reset time only
        t0 = time.perf_counter()
        out = super().reset(scene)
        self.t = {**before, "reset": before["reset"] + time.perf_counter() - t0}
        return out


class _Proxy:
    """The pybullet module with `stepSimulation` replaced by a timed version."""

    def __init__(self, module, step) -> None:
        self._m, self.stepSimulation = module, step

    def __getattr__(self, name):
        return getattr(self._m, name)


def measure(size: int, episodes: int, shadows: bool) -> dict:
    world = TimedWorld(SimConfig(image_size=size, shadows=shadows))
    oracle = ScriptedOracle(OracleConfig(noise=0.1))
    steps, successes = 0, 0
    t0 = time.perf_counter()
    for i in range(episodes):
        ep = run_episode(world, FAMILIES[i % len(FAMILIES)], seed=i, policy=oracle, max_steps=80)
        steps += ep.steps
        successes += ep.success
    total = time.perf_counter() - t0
    world.close()
    reset = world.t["reset"] / episodes
    per_step = (total - world.t["reset"]) / steps
    return {"size": size, "episodes": episodes, "successes": successes, "steps": steps, "seconds": total,
            "steps_per_s": steps / total, "ep50_per_min": 60.0 / (reset + 50 * per_step),
            **{k: v / steps * 1e3 for k, v in world.t.items() if k != "reset"}, "reset_ms": reset * 1e3,
            "other": (total - sum(world.t.values())) / steps * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--no-shadows", action="store_true")
    args = ap.parse_args()
    print(f"{'px':>4} {'eps':>4} {'ok':>3} {'steps':>5} {'steps/s':>8} {'ep50/min/core':>14} "
          f"{'render ms':>9} {'physics ms':>10} {'ik ms':>6} {'other ms':>8} {'reset ms':>8}")
    for size in args.sizes:
        r = measure(size, args.episodes, not args.no_shadows)
        print(f"{r['size']:>4} {r['episodes']:>4} {r['successes']:>3} {r['steps']:>5} {r['steps_per_s']:>8.1f} "
              f"{r['ep50_per_min']:>14.1f} {r['render']:>9.2f} {r['physics']:>10.2f} {r['ik']:>6.2f} "
              f"{r['other']:>8.2f} {r['reset_ms']:>8.1f}")
    print("ms columns are per control step; ep50/min/core = 60 s / (reset + 50 x per-step time)")


if __name__ == "__main__":
    main()
