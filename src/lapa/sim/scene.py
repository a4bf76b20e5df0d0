"""What is random about an episode's start: which objects (distinct colour + shape), where, the light.

`sample_scene(cfg, rng)` is a pure function of the config and the random generator, so a seed fixes the
scene exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lapa.sim.config import SimConfig


@dataclass
class ObjectSpec:
    """One object of a scene: what it is and where it starts (table-top position, yaw)."""

    colour: str
    shape: str
    x: float
    y: float
    yaw: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """Everything random about an episode's initial state, sampled from a seed."""

    objects: list[ObjectSpec]
    light_direction: tuple[float, float, float] = (0.4, -0.3, 1.0)
    camera_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hand_start: tuple[float, float, float] | None = None  # None: the home pose


def sample_scene(cfg: SimConfig, rng: np.random.Generator) -> Scene:
    """Distinct (colour, shape) objects at separated random positions in the spawn area."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if cfg.unique_colours:  # the colour alone names the object: shapes are 3-4 pixels wide at 64 px
        colours = rng.choice(len(cfg.colours), size=n, replace=False)
        chosen = [(cfg.colours[c], cfg.shapes[int(rng.integers(len(cfg.shapes)))]) for c in colours]
    else:
        kinds = [(c, s) for c in cfg.colours for s in cfg.shapes]
        chosen = [kinds[i] for i in rng.choice(len(kinds), size=n, replace=False)]
    low, high = np.asarray(cfg.spawn_low), np.asarray(cfg.spawn_high)
    for _ in range(1000):  # rejection sampling of separated positions
        xy = rng.uniform(low, high, size=(n, 2))
        dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(n) * 1e9
        if dist.min() >= cfg.min_separation:
            break
    else:
        raise RuntimeError(f"cannot place {n} objects {cfg.min_separation} m apart in the spawn area; "
                           "reduce sim.max_objects or sim.min_separation")
    objects = [ObjectSpec(c, s, float(x), float(y),
                          float(rng.uniform(-cfg.max_spawn_yaw, cfg.max_spawn_yaw)) if s == "cube" else 0.0)
               for (c, s), (x, y) in zip(chosen, xy)]
    light = (0.4, -0.3, 1.0)
    if cfg.light_jitter:
        light = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)), float(rng.uniform(0.6, 1.5)))
    offset = tuple(float(v) for v in rng.uniform(-cfg.camera_jitter, cfg.camera_jitter, size=3)) \
        if cfg.camera_jitter > 0 else (0.0, 0.0, 0.0)
    # drawn last and only when on: the same objects either way, and with it off the same tasks by seed
    start = tuple(float(v) for v in rng.uniform(cfg.start_low, cfg.start_high)) if cfg.random_start else None
    return Scene(objects, light, offset, start)  # type: ignore[arg-type]
