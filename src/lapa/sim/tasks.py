"""Task families: templated language instructions with paraphrases, task sampling and success checks.

A family samples a `Task` for a scene (target object, reference object, direction: whatever the
instruction names), or returns None when the scene cannot host it (e.g. no second cube to stack on);
`make_task` then draws another scene. Success checks read privileged simulator state through the world
and the positions recorded at the start of the episode (`Task.start`).

Families (`FAMILIES`):
- pick:    "pick up the red cube": the target is lifted >= 5 cm and held.
- push:    "push the blue cylinder to the left": moved >= 8 cm along the direction (image directions,
           see `lapa.sim.world`), mostly along it (sideways drift <= 0.6 x the progress), not held.
- put_on:  "put the red cube on the green cube": resting on the reference cube, released.
- next_to: "put the yellow cylinder next to the blue cube": within 9.5 cm of the reference, on the table,
           released (objects start >= 11 cm apart).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lapa.sim.config import COLOURS, SHAPES, SimConfig
from lapa.sim.scene import Scene, sample_scene

if TYPE_CHECKING:  # types only: the world is built by the caller
    from lapa.sim.world import TabletopWorld

# Unit vectors in the world frame for the image directions named in instructions.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (0.0, -1.0), "right": (0.0, 1.0), "front": (1.0, 0.0), "back": (-1.0, 0.0),
}
PUSH_DISTANCE = 0.08  # metres the object must move for a push to count
LIFT_HEIGHT = 0.05  # metres above its resting height for a pick to count
NEXT_TO_DISTANCE = 0.095  # metres between centres for "next to"

TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": ("pick up the {target}", "lift the {target}", "grab the {target} and lift it",
             "pick the {target} up", "raise the {target} off the table"),
    "push": ("push the {target} to the {direction}", "slide the {target} to the {direction}",
             "nudge the {target} towards the {direction}", "push the {target} over to the {direction}",
             "move the {target} to the {direction} by pushing it"),
    "put_on": ("put the {target} on the {reference}", "place the {target} on top of the {reference}",
               "stack the {target} on the {reference}", "set the {target} down on the {reference}"),
    "next_to": ("put the {target} next to the {reference}", "place the {target} beside the {reference}",
                "move the {target} close to the {reference}", "set the {target} down by the {reference}"),
}


def all_instructions() -> list[str]:
    """Every instruction the simulator can phrase (sorted, unique): each template with every object
    (colour + shape) as target and as reference, and every direction. What a tokenizer for this world
    must cover."""
    objects = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
    return sorted({template.format(target=target, reference=reference, direction=direction)
                   for templates in TEMPLATES.values()
                   for template, target, reference, direction
                   in itertools.product(templates, objects, objects, DIRECTIONS)})


@dataclass
class Task:
    """One episode's goal. `target`/`reference` index the scene's objects."""

    family: str
    instruction: str
    target: int
    reference: int | None = None
    direction: str | None = None
    goal_xy: tuple[float, float] | None = None  # where "next_to" intends to put the target (oracle hint)
    start: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # object positions at reset [n, 3]

    def record_start(self, world: TabletopWorld) -> None:
        """Remember where every object rests after the world settled (success checks compare to it)."""
        self.start = np.stack([world.object_pose(i)[0] for i in range(len(world.objects))])

    def success(self, world: TabletopWorld) -> bool:
        return SUCCESS_CHECKS[self.family](self, world)


def _free(xy: np.ndarray, scene: Scene, skip: set[int], clearance: float) -> bool:
    """No object (other than `skip`) within `clearance` of the point `xy`."""
    return all(np.hypot(o.x - xy[0], o.y - xy[1]) >= clearance
               for i, o in enumerate(scene.objects) if i not in skip)


def _in_area(xy: np.ndarray, cfg: SimConfig, margin: float = 0.03) -> bool:
    low, high = cfg.workspace_low, cfg.workspace_high
    return low[0] + margin <= xy[0] <= high[0] - margin and low[1] + margin <= xy[1] <= high[1] - margin


def _sample_push(rng, scene, cfg) -> Task | None:
    target = int(rng.integers(len(scene.objects)))
    o = scene.objects[target]
    start = np.array([o.x, o.y])
    free = []
    for name, d in DIRECTIONS.items():
        d = np.asarray(d)
        # the pusher starts behind the object and the object travels ~12 cm ahead: keep that corridor clear
        path = [start + d * t for t in np.linspace(-0.08, 0.16, 9)]
        if all(_in_area(p, cfg) for p in path[-1:]) and all(
                _free(p, scene, {target}, 0.075) for p in path):
            free.append(name)
    if not free:
        return None
    direction = free[int(rng.integers(len(free)))]
    return Task("push", "", target, direction=direction)


def _sample_pair(rng, scene, cfg, family: str) -> Task | None:
    n = len(scene.objects)
    target = int(rng.integers(n))
    refs = [i for i in range(n) if i != target and (family != "put_on" or scene.objects[i].shape == "cube")]
    if not refs:
        return None
    ref = refs[int(rng.integers(len(refs)))]
    if family == "put_on":
        return Task(family, "", target, reference=ref)
    r = scene.objects[ref]
    spots = []
    for d in DIRECTIONS.values():  # a free spot beside the reference, reachable and clear of the others
        xy = np.array([r.x, r.y]) + 0.072 * np.asarray(d)
        if _in_area(xy, cfg) and _free(xy, scene, {target, ref}, 0.08):
            spots.append(xy)
    if not spots:
        return None
    rng.integers(len(spots))  # drawn as before, so that seeds keep their scenes' paraphrases
    # the free spot nearest to the target: one spot per scene (a random one of up to 4 made the
    # demonstrations multimodal for a policy that sees only the image) and the shortest carry
    t = scene.objects[target]
    goal = min(spots, key=lambda xy: float(np.hypot(xy[0] - t.x, xy[1] - t.y)))
    return Task(family, "", target, reference=ref, goal_xy=(float(goal[0]), float(goal[1])))


def _sample_pick(rng, scene, cfg) -> Task | None:
    return Task("pick", "", int(rng.integers(len(scene.objects))))


SAMPLERS = {"pick": _sample_pick, "push": _sample_push,
            "put_on": lambda rng, s, c: _sample_pair(rng, s, c, "put_on"),
            "next_to": lambda rng, s, c: _sample_pair(rng, s, c, "next_to")}
FAMILIES = tuple(SAMPLERS)


def make_task(family: str, cfg: SimConfig, seed: int) -> tuple[Scene, Task]:
    """A scene and a task of `family`, both fixed by `seed`; the instruction is a random paraphrase."""
    if family not in SAMPLERS:
        raise ValueError(f"unknown task family {family!r}; known: {list(FAMILIES)}")
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    for _ in range(100):
        scene = sample_scene(cfg, rng)
        task = SAMPLERS[family](rng, scene, cfg)
        if task is not None:
            template = TEMPLATES[family][int(rng.integers(len(TEMPLATES[family])))]
            names = {"target": scene.objects[task.target].name, "direction": task.direction or "",
                     "reference": scene.objects[task.reference].name if task.reference is not None else ""}
            task.instruction = template.format(**names)
            return scene, task
    raise RuntimeError(f"could not sample a {family!r} task in 100 scenes; loosen the scene settings")


# ---------------------------------------------------------------------------------------------- success
def _pick_ok(task: Task, world: TabletopWorld) -> bool:
    z = world.object_pose(task.target)[0][2]
    return bool(world.held_object == task.target and z >= task.start[task.target, 2] + LIFT_HEIGHT)


def _push_ok(task: Task, world: TabletopWorld) -> bool:
    pos = world.object_pose(task.target)[0]
    delta = pos[:2] - task.start[task.target, :2]
    d = np.asarray(DIRECTIONS[task.direction])
    along = float(delta @ d)
    side = abs(float(delta @ np.array([-d[1], d[0]])))
    on_table = pos[2] < task.start[task.target, 2] + 0.01
    return bool(along >= PUSH_DISTANCE and side <= 0.6 * along and on_table and world.held_object is None)


def _put_on_ok(task: Task, world: TabletopWorld) -> bool:
    pos, ref = world.object_pose(task.target)[0], world.object_pose(task.reference)[0]
    size = world.cfg.object_size
    return bool(world.held_object is None and np.hypot(*(pos[:2] - ref[:2])) < 0.6 * size
                and pos[2] > ref[2] + 0.8 * size and world.touching(task.target, task.reference)
                and not world.touching(task.target))


def _next_to_ok(task: Task, world: TabletopWorld) -> bool:
    pos, ref = world.object_pose(task.target)[0], world.object_pose(task.reference)[0]
    on_table = pos[2] < task.start[task.target, 2] + 0.01
    return bool(world.held_object is None and on_table and np.hypot(*(pos[:2] - ref[:2])) <= NEXT_TO_DISTANCE
                and not world.touching(task.target))


SUCCESS_CHECKS = {"pick": _pick_ok, "push": _push_ok, "put_on": _put_on_ok, "next_to": _next_to_ok}
