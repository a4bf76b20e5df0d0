"""The simulator's own policies: the scripted oracle and a random baseline, registered as `oracle` and
`random` in the policy registry (`lapa.policy.get_policy`) when this module is imported.

Interface (`lapa.policy.base.Policy`, docs/contracts.md, "Policies"):
    policy.predict_action(image: uint8 [H, W, 3], instruction: str) -> float32 [7]
    policy.reset(*, world, task, seed) -> None          (optional; called before each episode)
The reset hook receives the `TabletopWorld` (privileged simulator state) and the `Task`; learned
policies ignore them (accept **kwargs), the oracle reads object poses through them, which is why it
needs no image. Learned policies are not imported here: they reach the simulator through the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lapa.config import require
from lapa.policy.base import register
from lapa.sim.tasks import DIRECTIONS, Task
from lapa.sim.world import TabletopWorld


@dataclass
class OracleConfig:
    """Diversity of scripted demonstrations: Gaussian action noise and a per-episode speed factor."""

    noise: float = 0.0  # std of translation noise as a fraction of the step (closed loop corrects it)
    noise_scale: str = "move"  # move: noise x this step's move (none once there) | step: noise x the max step
    speed_min: float = 0.7  # per-episode speed factor, uniform in [speed_min, speed_max] x max step
    speed_max: float = 1.0
    rotate: bool = False  # turn the hand square to cubes (true: yaw a policy must read off 4 px cubes) | keep yaw 0

    def __post_init__(self) -> None:
        require(0.0 <= self.noise <= 1.0, "oracle.noise", self.noise, "must be in [0, 1]")
        require(self.noise_scale in {"move", "step"}, "oracle.noise_scale", self.noise_scale, "must be move or step")
        require(0.1 <= self.speed_min <= self.speed_max <= 1.0, "oracle.speed_min", self.speed_min,
                "must satisfy 0.1 <= speed_min <= speed_max <= 1")


@dataclass
class _Phase:
    """Drive the commanded pose to `pos` / `yaw` with gripper command `grip`; then wait `hold` steps."""

    pos: np.ndarray | Callable[[], np.ndarray]
    grip: float
    yaw: float = 0.0
    hold: int = 0
    tol: float = 0.004
    until: Callable[[], bool] | None = None  # ends the hold early (the grasp took hold; the object is free)


class ScriptedOracle:
    """Waypoint scripts per task family, closed loop on privileged object poses.

    Each step moves the commanded end-effector pose towards the current phase's waypoint by at most
    `speed x max_delta_pos` (straight lines), plus noise; a phase ends when the command is within
    `tol` of the waypoint (and the hand within 1.5 cm of it) and its hold steps have passed.
    """

    MAX_PHASE_STEPS = 30  # a phase that cannot finish (blocked arm) gives way to the next one

    def __init__(self, cfg: OracleConfig | None = None) -> None:
        self.cfg = cfg or OracleConfig()
        self.world: TabletopWorld | None = None
        self.phases: list[_Phase] = []

    def reset(self, *, world: TabletopWorld, task: Task, seed: int = 0, **_: Any) -> None:
        self.world, self.task = world, task
        self.rng = np.random.default_rng([seed, 99])
        self.speed = float(self.rng.uniform(self.cfg.speed_min, self.cfg.speed_max))
        self.phases = self._plan(task)
        self.index, self.in_phase, self.held_for = 0, 0, 0

    # ---------------------------------------------------------------- plans
    def _plan(self, task: Task) -> list[_Phase]:
        w = self.world
        s = w.cfg.object_size
        target = lambda: w.object_pose(task.target)[0]  # noqa: E731  (read live: objects move)
        yaw = self._grasp_yaw(task.target)
        above = lambda h: (lambda: target() + [0, 0, h])  # noqa: E731
        if task.family == "push":
            d = np.array([*DIRECTIONS[task.direction], 0.0])
            behind = task.start[task.target] - d * (s / 2 + 0.03)
            low = behind + [0, 0, 0.015 - behind[2]]
            return [_Phase(behind + [0, 0, 0.1], 0.0), _Phase(low, 0.0),
                    _Phase(low + d * 0.13, 0.0), _Phase(low + d * 0.13 + [0, 0, 0.08], 0.0)]
        held = lambda: w.held_object == task.target  # noqa: E731
        grasp = [_Phase(above(0.08), 1.0, yaw), _Phase(above(0.0), 1.0, yaw, tol=0.003),
                 _Phase(lambda: w.target_pos.copy(), 0.0, yaw, hold=3, until=held)]
        lift = [_Phase(lambda: w.target_pos * [1, 1, 0] + [0, 0, 0.12], 0.0, yaw)]
        if task.family == "pick":
            return grasp + lift
        place_yaw, clear = yaw, 0.04  # clear: height of the carried object's bottom above its goal
        if task.family == "put_on":
            ref = task.reference
            place = lambda h: (lambda: w.object_pose(ref)[0] + [0, 0, s + h])  # noqa: E731
            # turn the carried object square to the cube below (fingers then never catch its edges)
            ref_yaw = self._grasp_yaw(ref)
            place_yaw = float((ref_yaw - yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4 + yaw)
        else:  # next_to: on the table at the planned spot
            goal = np.array([*task.goal_xy, s / 2])
            place = lambda h: (lambda: goal + [0, 0, h])  # noqa: E731
            clear = 0.07  # pass above the neighbours (4.5 cm tall), then descend vertically
            away = goal[:2] - task.start[task.reference, :2]
            # the fingers close along yaw + pi/2: turn the hand so they open across the gap (they
            # cannot knock the reference object); of the equivalent yaws (mod pi) take the nearest
            across = math.atan2(away[1], away[0])
            place_yaw = float((across - yaw + math.pi / 2) % math.pi - math.pi / 2 + yaw)
        opened = lambda: w.gripper_width() > s + 0.01  # noqa: E731  (the fingers let go of the object)
        if not self.cfg.rotate:
            place_yaw = 0.0
        return grasp + lift + [_Phase(place(clear), 0.0, place_yaw), _Phase(place(0.008), 0.0, place_yaw),
                               _Phase(lambda: w.target_pos.copy(), 1.0, place_yaw, hold=2, until=opened),
                               _Phase(lambda: w.target_pos + [0, 0, 0.05], 1.0, place_yaw)]

    def _grasp_yaw(self, index: int) -> float:
        """Cube yaw folded into [-pi/4, pi/4] (a parallel gripper sees a cube's 4 faces alike)."""
        if self.world.scene.objects[index].shape != "cube" or not self.cfg.rotate:
            return 0.0
        orn = self.world.object_pose(index)[1]
        yaw = self.world.p.getEulerFromQuaternion(orn)[2]
        return float((yaw + math.pi / 4) % (math.pi / 2) - math.pi / 4)

    # ---------------------------------------------------------------- acting
    def predict_action(self, image: np.ndarray | None = None, instruction: str = "") -> np.ndarray:
        if self.world is None:
            raise RuntimeError("ScriptedOracle needs reset(world=..., task=...) before predict_action")
        w, phase = self.world, self.phases[min(self.index, len(self.phases) - 1)]
        goal = np.asarray(phase.pos() if callable(phase.pos) else phase.pos, dtype=np.float64)
        step = self.speed * w.cfg.max_delta_pos
        delta = goal - w.target_pos
        norm = np.linalg.norm(delta)
        if norm > step:
            delta *= step / norm
        if self.cfg.noise > 0:
            # "move": the noise shrinks with the move, so the oracle stops exactly at a waypoint instead
            # of dithering around it with pure-noise actions (an image cannot predict those)
            scale = float(np.linalg.norm(delta)) if self.cfg.noise_scale == "move" else step
            delta = delta + self.rng.normal(0.0, self.cfg.noise * scale, size=3)
        dyaw = np.clip(phase.yaw - w.target_rpy[2], -w.cfg.max_delta_rot, w.cfg.max_delta_rot)
        drp = np.clip(-w.target_rpy[:2], -w.cfg.max_delta_rot, w.cfg.max_delta_rot)  # stay pointing down
        self._advance(phase, goal, max(0.0, norm - step))
        return np.array([*delta, *drp, dyaw, phase.grip], dtype=np.float32)

    def _advance(self, phase: _Phase, goal: np.ndarray, remaining: float) -> None:
        """`remaining`: the distance left after this step's (noise-free) move. A phase ends on the step
        that arrives (no idle step at the waypoint), once the hand has caught up with the command and
        its hold is over (or its `until` holds)."""
        self.in_phase += 1
        reached = remaining <= phase.tol and np.linalg.norm(self.world._ee_pose()[0] - goal) < 0.015
        if reached:
            self.held_for += 1
        done = reached and (self.held_for > phase.hold or (phase.until is not None and phase.until()))
        if done or self.in_phase >= self.MAX_PHASE_STEPS:
            self.index, self.in_phase, self.held_for = self.index + 1, 0, 0


class RandomPolicy:
    """Uniform random actions over the whole action box: the floor every learned policy must beat."""

    def __init__(self, max_delta_pos: float = 0.04, max_delta_rot: float = 0.25) -> None:
        self.high = np.array([max_delta_pos] * 3 + [max_delta_rot] * 3 + [1.0])
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int = 0, world: TabletopWorld | None = None, **_: Any) -> None:
        self.rng = np.random.default_rng([seed, 7])
        if world is not None:
            self.high = np.array([world.cfg.max_delta_pos] * 3 + [world.cfg.max_delta_rot] * 3 + [1.0])

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        low = np.concatenate([-self.high[:6], [0.0]])
        return self.rng.uniform(low, self.high).astype(np.float32)


def _oracle(oracle: OracleConfig | None = None, **_: Any) -> ScriptedOracle:
    """`get_policy("oracle", oracle=OracleConfig(...))`; other options (meant for other policies) are ignored."""
    return ScriptedOracle(oracle)


def _random(**_: Any) -> RandomPolicy:
    """`get_policy("random")`: the action box comes from the world at `reset`."""
    return RandomPolicy()


register("oracle", _oracle)
register("random", _random)
