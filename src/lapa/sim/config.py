"""Settings of the simulated world: camera, control, action limits and scene randomisation
(conf/sim/*.yaml), and the object palette they choose from.

A module of its own so that the world, the scene sampler and the task definitions can all read the
settings without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config import require

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.7, 0.15),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.0, 0.5, 0.0),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("cube", "cylinder")


@dataclass
class CameraConfig:
    """A pinhole camera looking from `eye` at `target` (metres); `fov` in degrees (vertical)."""

    eye: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.7])
    target: list[float] = field(default_factory=lambda: [0.45, 0.0, 0.05])
    up: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    fov: float = 45.0
    near: float = 0.05
    far: float = 3.0

    def __post_init__(self) -> None:
        for key in ("eye", "target", "up"):
            value = getattr(self, key)
            require(len(value) == 3, f"camera.{key}", value, "must be a list of 3 numbers")
        require(0.0 < self.fov < 170.0, "camera.fov", self.fov, "must be in (0, 170) degrees")
        require(0.0 < self.near < self.far, "camera.near", self.near, "must be > 0 and < camera.far")


@dataclass
class SimConfig:
    """World, camera, control and scene-randomisation settings (conf/sim/*.yaml)."""

    image_size: int = 64  # square RGB images (64: what the image-based probe certifies, docs/simulator.md)
    wrist_camera: bool = False  # also render a camera on the hand (observation key "wrist_image")
    camera: CameraConfig = field(default_factory=CameraConfig)
    control_hz: int = 10
    physics_hz: int = 240  # physics substeps per control step = physics_hz / control_hz
    max_delta_pos: float = 0.04  # metres per step
    max_delta_rot: float = 0.25  # radians per step
    max_tilt: float = 0.5  # |roll|, |pitch| limit in radians
    max_yaw: float = 1.6  # |yaw| limit in radians
    workspace_low: list[float] = field(default_factory=lambda: [0.25, -0.32, 0.0])
    workspace_high: list[float] = field(default_factory=lambda: [0.75, 0.32, 0.40])
    # Scene randomisation
    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "purple",
                                                        "orange"])
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    unique_colours: bool = True  # no two objects of a scene share a colour (at 64 px shape is barely visible)
    min_objects: int = 3
    max_objects: int = 4
    object_size: float = 0.045  # cube edge, cylinder diameter and height (metres)
    spawn_low: list[float] = field(default_factory=lambda: [0.38, -0.17])
    spawn_high: list[float] = field(default_factory=lambda: [0.62, 0.17])
    min_separation: float = 0.11  # metres between object centres at spawn
    max_spawn_yaw: float = 0.6  # radians; cubes spawn with a random yaw in +-this
    random_start: bool = False  # the hand starts at a random point of the start box (else the home pose)
    start_low: list[float] = field(default_factory=lambda: [0.28, -0.18, 0.12])  # start box, metres
    start_high: list[float] = field(default_factory=lambda: [0.58, 0.18, 0.36])
    light_jitter: bool = False  # random light direction per episode
    camera_jitter: float = 0.0  # metres of random offset of the camera eye per episode
    shadows: bool = True  # shadows make height (lifting) visible; costs some render time
    robot_mesh: str = "simple"  # simple: the URDF's convex collision meshes (30x fewer triangles) | detailed

    def __post_init__(self) -> None:
        require(16 <= self.image_size <= 1024, "sim.image_size", self.image_size, "must be in 16..1024")
        require(self.control_hz >= 1, "sim.control_hz", self.control_hz, "must be >= 1")
        require(self.physics_hz >= self.control_hz and self.physics_hz % self.control_hz == 0,
                "sim.physics_hz", self.physics_hz, "must be a multiple of sim.control_hz")
        require(self.max_delta_pos > 0, "sim.max_delta_pos", self.max_delta_pos, "must be > 0")
        require(self.max_delta_rot > 0, "sim.max_delta_rot", self.max_delta_rot, "must be > 0")
        unknown = [c for c in self.colours if c not in COLOURS]
        require(not unknown, "sim.colours", self.colours, f"unknown colour(s) {unknown}; known: "
                f"{sorted(COLOURS)}")
        bad = [s for s in self.shapes if s not in SHAPES]
        require(not bad and self.shapes, "sim.shapes", self.shapes, f"must be a non-empty subset of {SHAPES}")
        require(2 <= self.min_objects <= self.max_objects, "sim.min_objects", self.min_objects,
                "must be >= 2 and <= sim.max_objects")
        kinds = len(self.colours) * (1 if self.unique_colours else len(self.shapes))
        require(self.max_objects <= kinds, "sim.max_objects", self.max_objects,
                "must be <= len(colours) (x len(shapes) unless unique_colours) (objects must be distinguishable)")
        require(0.02 <= self.object_size <= 0.07, "sim.object_size", self.object_size,
                "must be in 0.02..0.07 m (the gripper opens 0.08 m)")
        for key in ("workspace_low", "workspace_high"):
            require(len(getattr(self, key)) == 3, f"sim.{key}", getattr(self, key), "must have 3 values")
        for key in ("start_low", "start_high"):
            require(len(getattr(self, key)) == 3, f"sim.{key}", getattr(self, key), "must have 3 values")
        require(all(lo <= hi for lo, hi in zip(self.start_low, self.start_high)), "sim.start_low",
                self.start_low, "must be <= sim.start_high in every coordinate")
        for key in ("spawn_low", "spawn_high"):
            require(len(getattr(self, key)) == 2, f"sim.{key}", getattr(self, key), "must have 2 values")
        require(self.robot_mesh in {"simple", "detailed"}, "sim.robot_mesh", self.robot_mesh,
                "must be simple or detailed")
        require(self.camera_jitter >= 0, "sim.camera_jitter", self.camera_jitter, "must be >= 0")

    @property
    def substeps(self) -> int:
        return self.physics_hz // self.control_hz
