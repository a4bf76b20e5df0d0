"""What makes the world learnable from images (issue 15): colours name objects, the oracle stops exactly
at its waypoints and keeps the hand's yaw, "next to" has one spot per scene, the random start; and the
pieces of `benchmarks/sim_learnability.py` at a tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lapa.sim.config import SimConfig
from lapa.sim.policies import OracleConfig, ScriptedOracle
from lapa.sim.rollout import run_episode
from lapa.sim.scene import sample_scene
from lapa.sim.tasks import make_task
from lapa.sim.world import TabletopWorld


def test_unique_colours_name_the_object():
    cfg = SimConfig(image_size=32)
    for seed in range(30):
        colours = [o.colour for o in sample_scene(cfg, np.random.default_rng(seed)).objects]
        assert len(set(colours)) == len(colours)
    loose = SimConfig(image_size=32, unique_colours=False)  # the old sampler: colour + shape distinct
    shared = [len({o.colour for o in s.objects}) < len(s.objects)
              for s in (sample_scene(loose, np.random.default_rng(i)) for i in range(30))]
    assert any(shared)


def test_next_to_spot_is_the_free_spot_nearest_the_target():
    cfg = SimConfig(image_size=32)
    for seed in range(10):
        scene, task = make_task("next_to", cfg, seed)
        t, r = scene.objects[task.target], scene.objects[task.reference]
        d_goal = np.hypot(task.goal_xy[0] - t.x, task.goal_xy[1] - t.y)
        # every spot beside the reference (0.072 m along an image direction) that is closer is not free
        for d in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            xy = np.array([r.x, r.y]) + 0.072 * np.asarray(d)
            if np.hypot(xy[0] - t.x, xy[1] - t.y) < d_goal - 1e-9:
                others = [o for i, o in enumerate(scene.objects) if i not in (task.target, task.reference)]
                blocked = any(np.hypot(o.x - xy[0], o.y - xy[1]) < 0.08 for o in others)
                outside = not (cfg.workspace_low[0] + 0.03 <= xy[0] <= cfg.workspace_high[0] - 0.03
                               and cfg.workspace_low[1] + 0.03 <= xy[1] <= cfg.workspace_high[1] - 0.03)
                assert blocked or outside


def test_random_start_inside_the_box_pointing_down():
    cfg = SimConfig(image_size=32, random_start=True)
    starts = []
    with TabletopWorld(cfg) as w:
        for seed in range(3):
            scene, _ = make_task("pick", cfg, seed)
            obs = w.reset(scene)
            pos = obs["state"][:3]
            assert np.all(pos >= np.asarray(cfg.start_low) - 0.02) and np.all(pos <= np.asarray(cfg.start_high) + 0.02)
            assert np.abs(obs["state"][3:5]).max() < 0.05  # pointing down
            starts.append(pos)
    assert np.linalg.norm(starts[0] - starts[1]) > 0.01
    # the start is drawn after the objects: the same objects with and without it; off (the default)
    # draws nothing, so scenes and tasks stay those of before the option existed
    plain = SimConfig(image_size=32)
    assert make_task("pick", plain, 4)[0].hand_start is None
    on, off = (sample_scene(c, np.random.default_rng(4)) for c in (cfg, plain))
    assert on.objects == off.objects and on.hand_start is not None


@pytest.mark.parametrize("family", ["pick", "put_on"])
def test_oracle_moves_every_step_and_keeps_yaw(world, family):
    """noise_scale=move: no pure-noise steps around a waypoint; rotate=false: yaw commands stay zero; the
    grasp waits only until the object is held (at most 2 idle steps in a row: close, then lift)."""
    oracle = ScriptedOracle(OracleConfig(noise=0.1, rotate=False))
    ep = run_episode(world, family, 3, oracle, max_steps=80, record=False)
    assert ep.success
    assert np.abs(ep.actions[1:, 5]).max() < 1e-3  # the first step may square the start pose
    idle = np.linalg.norm(ep.actions[:, :3], axis=1) < 1e-3
    runs = max((len(r) for r in "".join("x" if i else "." for i in idle).split(".")), default=0)
    assert runs <= 2
    moving = ep.actions[~idle, :3]
    assert np.linalg.norm(moving, axis=1).min() > 1e-3


# ------------------------------------------------------------------------------- the benchmark's probe
def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_learnability.py"
    spec = importlib.util.spec_from_file_location("sim_learnability", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_trains_and_acts_at_tiny_size():
    torch = pytest.importorskip("torch")
    bench = _benchmark()
    vocab = bench.Vocabulary()
    a, b = vocab.encode("put the red cube on the green cube"), vocab.encode("put the green cube on the red cube")
    assert not torch.equal(a, b) and sorted(a.tolist()) == sorted(b.tolist())  # order is kept
    rng = np.random.default_rng(0)
    demos = [{"frames": rng.integers(0, 255, (t + 1, 32, 32, 3), dtype=np.uint8),
              "actions": rng.normal(0, 0.01, (t, 7)).astype(np.float32), "instruction": "pick up the red cube",
              "family": "pick"} for t in (5, 7)]
    for d in demos:
        d["actions"][:, 6] = [1.0] * (len(d["actions"]) - 2) + [0.0, 0.0]
    data = bench.build_dataset(demos, history=2, chunk=3, vocab=vocab)
    assert data["targets"].shape == (12, 3, 7) and data["masks"][4].tolist() == [1.0, 0.0, 0.0]
    model, stats = bench.train_probe(data, steps=3, image_size=32, chunk=3, batch=4, log_every=0)
    policy = bench.ProbePolicy(model, stats, vocab, execute=2)
    policy.reset()
    out = [policy.predict_action(demos[0]["frames"][i], "pick up the red cube") for i in range(3)]
    assert all(o.shape == (7,) and o.dtype == np.float32 and o[6] in (0.0, 1.0) for o in out)
    assert len(policy.frames) == 2
