"""Run one episode: build the task's scene, let a policy act at the control rate, record everything.

An episode with T frames has T - 1 actions: frame 0 is the observation after reset, action i (the
clipped action actually applied) takes frame i to frame i + 1. The episode ends at the first step whose
success check holds (the final frame shows the success) or after `max_steps` actions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lapa.policy.base import Policy
from lapa.sim.tasks import make_task
from lapa.sim.world import TabletopWorld


@dataclass
class Episode:
    """What one rollout produced. Images are kept only when recorded (`record=True`)."""

    family: str
    instruction: str
    seed: int
    success: bool
    frames: np.ndarray  # uint8 [T, H, W, 3] (or [0] when not recorded)
    actions: np.ndarray  # float32 [T-1, 7]
    states: np.ndarray  # float32 [T, 14]
    wrist_frames: np.ndarray | None = None  # uint8 [T, H, W, 3] when the wrist camera is on
    timings: dict[str, float] = field(default_factory=dict)  # seconds: policy, step (physics + IK + render)

    @property
    def steps(self) -> int:
        return len(self.actions)


def run_episode(world: TabletopWorld, family: str, seed: int, policy: Policy, max_steps: int = 60,
                record: bool = True) -> Episode:
    """Roll out `policy` on the `family` task fixed by `seed` in `world` (which is reset here)."""
    scene, task = make_task(family, world.cfg, seed)
    obs = world.reset(scene)
    task.record_start(world)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset(world=world, task=task, seed=seed)
    frames, wrist, actions, states = [obs["image"]], [obs.get("wrist_image")], [], [obs["state"]]
    t_policy = t_step = 0.0
    success = False
    for _ in range(max_steps):
        t0 = time.perf_counter()
        raw = policy.predict_action(obs["image"], task.instruction)
        t1 = time.perf_counter()
        action = world.clip_action(raw)
        obs = world.step(action)
        t_step += time.perf_counter() - t1
        t_policy += t1 - t0
        actions.append(action.astype(np.float32))
        states.append(obs["state"])
        if record:
            frames.append(obs["image"])
            wrist.append(obs.get("wrist_image"))
        if task.success(world):
            success = True
            break
    return Episode(
        family=family, instruction=task.instruction, seed=seed, success=success,
        frames=np.stack(frames) if record else np.zeros((0,), np.uint8),
        actions=np.stack(actions) if actions else np.zeros((0, 7), np.float32),
        states=np.stack(states),
        wrist_frames=np.stack(wrist) if record and world.cfg.wrist_camera else None,
        timings={"policy": t_policy, "step": t_step},
    )
