"""Task families: instructions name a distinguishable target; each success check accepts a scripted
success and rejects a scripted failure."""

from __future__ import annotations

import numpy as np
import pytest

from lapa.sim.config import SimConfig
from lapa.sim.policies import OracleConfig, ScriptedOracle
from lapa.sim.rollout import run_episode
from lapa.sim.tasks import DIRECTIONS, FAMILIES, make_task


class Idle:
    """Holds still with the gripper open: must never succeed."""

    def predict_action(self, image, instruction):
        return np.array([0, 0, 0, 0, 0, 0, 1.0])


def _setup(world, family, seed):
    scene, task = make_task(family, world.cfg, seed)
    world.reset(scene)
    task.record_start(world)
    return scene, task


def _teleport(world, index, xyz):
    world.p.resetBasePositionAndOrientation(world.objects[index], list(xyz), [0, 0, 0, 1],
                                            physicsClientId=world.client)
    for _ in range(3):  # let it settle
        world.step([0, 0, 0, 0, 0, 0, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_names_target(family):
    cfg = SimConfig()
    for seed in range(5):
        scene, task = make_task(family, cfg, seed)
        target = scene.objects[task.target].name
        assert target in task.instruction
        assert sum(o.name == target for o in scene.objects) == 1
        if task.reference is not None:
            assert scene.objects[task.reference].name in task.instruction and task.reference != task.target
    assert make_task(family, cfg, 1)[1].instruction == make_task(family, cfg, 1)[1].instruction


@pytest.mark.parametrize("family", FAMILIES)
def test_idle_policy_fails(world, family):
    assert not run_episode(world, family, seed=2, policy=Idle(), max_steps=4, record=False).success


def test_push_check(world):
    scene, task = _setup(world, "push", seed=5)
    start = task.start[task.target]
    d = np.array([*DIRECTIONS[task.direction], 0.0])
    _teleport(world, task.target, start + 0.04 * d)  # not far enough
    assert not task.success(world)
    _teleport(world, task.target, start - 0.1 * d)  # the wrong way
    assert not task.success(world)
    _teleport(world, task.target, start + 0.1 * d)
    assert task.success(world)


def test_put_on_check(world):
    scene, task = _setup(world, "put_on", seed=3)
    ref = world.object_pose(task.reference)[0]
    s = world.cfg.object_size
    _teleport(world, task.target, ref + [0.09, 0, 0])  # beside it, not on it
    assert not task.success(world)
    _teleport(world, task.target, ref + [0, 0, s + 0.002])
    assert task.success(world)


def test_next_to_check(world):
    scene, task = _setup(world, "next_to", seed=4)
    assert not task.success(world)  # objects start >= 11 cm apart
    ref = world.object_pose(task.reference)[0]
    _teleport(world, task.target, [*task.goal_xy, ref[2]])
    assert task.success(world)
    _teleport(world, task.target, ref + [0, 0, world.cfg.object_size + 0.002])  # on top is not "next to"
    assert not task.success(world)


def test_pick_check_needs_a_grasp(world):
    scene, task = _setup(world, "pick", seed=6)
    # lifted but not held (teleported in the air): not a pick
    world.p.resetBasePositionAndOrientation(world.objects[task.target], list(task.start[task.target] + [0, 0, 0.1]),
                                            [0, 0, 0, 1], physicsClientId=world.client)
    assert world.held_object is None and not task.success(world)


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_succeeds(world, family):
    oracle = ScriptedOracle(OracleConfig(noise=0.1))
    for seed in (0, 1):
        ep = run_episode(world, family, seed, oracle, max_steps=80, record=False)
        assert ep.success, (family, seed, ep.instruction)
        assert 10 <= ep.steps <= 80
        assert np.abs(ep.actions[:, :3]).max() <= world.cfg.max_delta_pos + 1e-6
        assert set(np.unique(ep.actions[:, 6])) <= {0.0, 1.0}


def test_closed_fingers_pushing_an_object_do_not_grasp_it(world):
    """The push oracle presses with closed fingers; both fingers touch the object, yet it must not be
    attached (it was, for seed 1000029 of `lapa sim eval` before colours became unique per scene, before the
    grasp assist checked the opening; seed 1000000 is a push to the front in the scenes of today)."""
    scene, task = make_task("push", world.cfg, 1000000)
    oracle = ScriptedOracle()
    held = []

    class Watch:
        def reset(self, **kw):
            oracle.reset(**kw)

        def predict_action(self, image, instruction):
            held.append(world.held_object)
            return oracle.predict_action(image, instruction)

    ep = run_episode(world, "push", 1000000, Watch(), max_steps=80, record=False)
    assert task.direction == "front" and set(held) == {None}
    assert ep.success
