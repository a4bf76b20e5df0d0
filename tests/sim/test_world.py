"""The world: action limits, observation shapes, determinism by seed, config validation."""

from __future__ import annotations

import numpy as np
import pytest

from lapa.config import ConfigError
from lapa.sim.config import SimConfig
from lapa.sim.policies import RandomPolicy
from lapa.sim.rollout import run_episode
from lapa.sim.scene import sample_scene
from lapa.sim.world import STATE_DIM, TabletopWorld


def test_clip_action_limits(world):
    cfg = world.cfg
    a = world.clip_action([1.0, -1.0, 0.01, 5.0, -5.0, 0.1, 3.0])
    np.testing.assert_allclose(a, [cfg.max_delta_pos, -cfg.max_delta_pos, 0.01, cfg.max_delta_rot,
                                   -cfg.max_delta_rot, 0.1, 1.0])
    assert world.clip_action([0, 0, 0, 0, 0, 0, -2.0])[6] == 0.0
    assert np.array_equal(world.clip_action([np.nan] * 6 + [0.5]), [0, 0, 0, 0, 0, 0, 0.5])
    with pytest.raises(ValueError, match="7 values"):
        world.clip_action([0.0] * 6)


def test_step_moves_at_most_one_step_and_stays_in_workspace(world):
    scene = sample_scene(world.cfg, np.random.default_rng(3))
    obs = world.reset(scene)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (STATE_DIM,) and obs["state"].dtype == np.float32
    start = world.target_pos.copy()
    world.step([10.0, 0, 0, 0, 0, 0, 1])  # far beyond the limit: moves by exactly max_delta_pos
    np.testing.assert_allclose(world.target_pos - start, [world.cfg.max_delta_pos, 0, 0], atol=1e-12)
    for _ in range(15):
        obs = world.step([0, 0, 1.0, 0, 0, 1.0, 1])
    assert world.target_pos[2] == pytest.approx(world.cfg.workspace_high[2])
    assert world.target_rpy[2] == pytest.approx(world.cfg.max_yaw)
    # the hand follows the command through IK: measured pose within 2 cm / 0.05 rad of it
    assert np.linalg.norm(obs["state"][:3] - world.target_pos) < 0.02
    assert abs(obs["state"][5] - world.cfg.max_yaw) < 0.05
    # the gripper command sets the finger opening: 8 cm open, ~0 closed (nothing between the fingers)
    assert obs["state"][6] == pytest.approx(0.08, abs=2e-3)
    for _ in range(3):
        obs = world.step([0, 0, 0, 0, 0, 0, 0.0])
    assert obs["state"][6] < 0.01


def test_same_seed_same_images_and_actions():
    cfg = SimConfig(image_size=32)
    runs = []
    for _ in range(2):
        with TabletopWorld(cfg) as w:
            runs.append(run_episode(w, "push", seed=11, policy=RandomPolicy(), max_steps=6))
    a, b = runs
    assert a.instruction == b.instruction
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.states, b.states)
    with TabletopWorld(cfg) as w:  # another seed: another scene and other random actions
        c = run_episode(w, "push", seed=12, policy=RandomPolicy(), max_steps=6)
    assert not np.array_equal(a.actions, c.actions) and not np.array_equal(a.frames[0], c.frames[0])


def test_wrist_camera_and_randomisation():
    cfg = SimConfig(image_size=32, wrist_camera=True, light_jitter=True, camera_jitter=0.03)
    with TabletopWorld(cfg) as w:
        obs = w.reset(sample_scene(cfg, np.random.default_rng(0)))
        assert obs["wrist_image"].shape == (32, 32, 3)
        assert not np.array_equal(obs["wrist_image"], obs["image"])
    s0, s1 = (sample_scene(cfg, np.random.default_rng(i)) for i in (0, 1))
    assert s0.light_direction != s1.light_direction and s0.camera_offset != s1.camera_offset
    for s in (s0, s1):  # objects are distinguishable: no two share colour and shape
        names = [o.name for o in s.objects]
        assert len(set(names)) == len(names) and cfg.min_objects <= len(names) <= cfg.max_objects


@pytest.mark.parametrize("override, key", [
    ({"image_size": 8}, "sim.image_size"), ({"physics_hz": 25}, "sim.physics_hz"),
    ({"colours": ["red", "pink"]}, "sim.colours"), ({"max_objects": 20}, "sim.max_objects"),
    ({"robot_mesh": "fancy"}, "sim.robot_mesh"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        SimConfig(**override)


@pytest.mark.parametrize("preset", ["default", "hd", "randomized"])
def test_presets_compose_and_host_every_task(preset):
    from lapa.config import load
    from lapa.sim.generate import GenerateConfig
    from lapa.sim.tasks import FAMILIES, make_task

    cfg = load("sim_generate", GenerateConfig, ["output=x", f"sim={preset}"]).sim
    assert cfg.image_size == (256 if preset == "hd" else 64)
    for seed in range(10):
        for family in FAMILIES:
            scene, _ = make_task(family, cfg, seed)
            assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
