"""The tabletop world: a Franka Panda on a table with coloured objects, in headless pybullet.

Frames and units
----------------
- World frame: metres, z up. The robot base is at the origin; the table top is the plane z = 0 and the
  workspace lies in front of the robot (x ~ 0.3..0.7, y ~ -0.3..0.3).
- The fixed third-person camera stands at the far side of the table looking back at the robot, so in
  the image: left = world -y, right = world +y, front (towards the camera) = +x, back (towards the
  robot) = -x. Task instructions ("push ... to the left") use these image directions.

Action space (one action per control step, 10 Hz by default), float [7]:
    [dx, dy, dz, droll, dpitch, dyaw, gripper]
- dx, dy, dz: end-effector translation in metres per step, world frame, clipped to +-max_delta_pos.
- droll, dpitch, dyaw: rotation in radians per step, clipped to +-max_delta_rot. The orientation is
  kept as Euler angles (roll, pitch, yaw) relative to "gripper pointing straight down"; roll and pitch
  are limited to +-max_tilt, yaw to +-max_yaw. Positive yaw turns the hand counter-clockwise seen from
  above; at yaw 0 the fingers close along the world y axis.
- gripper: the commanded opening, an absolute value in [0, 1]: 1 = fully open (8 cm between the
  fingers), 0 = closed. Values < 0.5 count as "close" for the grasp (see below).
Deltas are integrated into a commanded target pose (clipped to the workspace box), which inverse
kinematics (with joint limits) turns into joint position targets; physics then runs for one control
period. Integrating the *command* rather than adding deltas to the measured pose keeps a stationary
command stationary (no sag under gravity or contact).

Grasping: the fingers close physically; when the gripper command is "close" and both fingers touch the
same object, a fixed constraint holds the object to the hand until the gripper opens ("grasp assist").
It makes grasps reliable at 10 Hz control with few physics substeps, without changing what the camera
sees (the fingers still close on the object).

Proprioception, float32 [14]: end-effector position (3), Euler angles relative to pointing down (3),
gripper width in metres (1), arm joint angles (7).

Determinism: `reset(scene)` rebuilds the whole simulation, so an episode depends only on its scene and
its actions, never on what ran before in the same process.
"""

from __future__ import annotations

import math

import numpy as np

from lapa.sim.config import COLOURS, SimConfig
from lapa.sim.scene import Scene

ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
HAND_LINK = 8
EE_LINK = 11  # panda_grasptarget: between the fingertips
ARM_FORCES = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
HOME_JOINTS = (0.0, -0.35, 0.0, -2.3, 0.0, 1.95, 0.785)
MAX_FINGER = 0.04  # metres per finger; the opening is twice this
MIN_GRASP_OPENING = 0.005  # m per finger: an object between the fingers keeps them at least this far open
STATE_DIM = 14
ACTION_DIM = 7


class TabletopWorld:
    """One pybullet client (DIRECT, TinyRenderer) holding the table, the robot and a scene's objects.

    `reset(scene) -> obs`, `step(action) -> obs`; `obs` is a dict with "image" (uint8 [H, W, 3]),
    optionally "wrist_image", and "state" (float32 [14], see the module docstring). Privileged state for
    scripted policies and success checks: `object_pose(i)`, `held_object`, `target_pose`.
    """

    def __init__(self, cfg: SimConfig | None = None) -> None:
        import pybullet as p
        import pybullet_data

        self.cfg = cfg or SimConfig()
        self.p = p
        self.client = p.connect(p.DIRECT)
        self._data_path = pybullet_data.getDataPath()
        self.scene: Scene | None = None
        self.objects: list[int] = []  # pybullet body ids, in scene order
        self.robot = -1
        self.held_object: int | None = None  # scene index of the object held by grasp assist
        self._grasp_constraint: int | None = None
        self.target_pos = np.zeros(3)
        self.target_rpy = np.zeros(3)
        self.gripper_command = 1.0
        self._proj = p.computeProjectionMatrixFOV(self.cfg.camera.fov, 1.0, self.cfg.camera.near,
                                                  self.cfg.camera.far)
        self._down = p.getQuaternionFromEuler([math.pi, 0.0, 0.0])

    # ------------------------------------------------------------------ building the scene
    def reset(self, scene: Scene) -> dict[str, np.ndarray]:
        """Rebuild the simulation for `scene` and return the first observation."""
        p, c, cfg = self.p, self.client, self.cfg
        p.resetSimulation(physicsClientId=c)
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / cfg.physics_hz, numSolverIterations=30,
                                    deterministicOverlappingPairs=1, physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        self.scene = scene
        self.held_object, self._grasp_constraint = None, None
        table_shape = dict(shapeType=p.GEOM_BOX, halfExtents=[0.45, 0.55, 0.02], physicsClientId=c)
        p.createMultiBody(0, p.createCollisionShape(**table_shape),
                          p.createVisualShape(rgbaColor=[0.62, 0.5, 0.38, 1], **table_shape),
                          basePosition=[0.4, 0.0, -0.02], physicsClientId=c)
        floor_shape = dict(shapeType=p.GEOM_BOX, halfExtents=[3.0, 3.0, 0.01], physicsClientId=c)
        p.createMultiBody(0, -1, p.createVisualShape(rgbaColor=[0.25, 0.27, 0.3, 1], **floor_shape),
                          basePosition=[0.0, 0.0, -0.75], physicsClientId=c)  # dark backdrop: no white sky
        self.robot = p.loadURDF(robot_urdf(self._data_path, self.cfg.robot_mesh), [0, 0, 0], useFixedBase=True,
                                flags=p.URDF_ENABLE_CACHED_GRAPHICS_SHAPES, physicsClientId=c)
        for link, rgba in _ROBOT_COLOURS.items():
            p.changeVisualShape(self.robot, link, rgbaColor=rgba, physicsClientId=c)
        for j, q in zip(ARM_JOINTS, HOME_JOINTS):
            p.resetJointState(self.robot, j, q, physicsClientId=c)
        for j in FINGER_JOINTS:
            p.resetJointState(self.robot, j, MAX_FINGER, physicsClientId=c)
            p.changeDynamics(self.robot, j, lateralFriction=1.5, physicsClientId=c)
        if scene.hand_start is not None:  # a random start: the arm's joints set by IK, pointing down
            q = p.calculateInverseKinematics(
                self.robot, EE_LINK, list(scene.hand_start), self._down, lowerLimits=_LOWER, upperLimits=_UPPER,
                jointRanges=_RANGES, restPoses=_REST, maxNumIterations=100, residualThreshold=1e-5,
                physicsClientId=c)
            for j, qj in zip(ARM_JOINTS, np.clip(q[:7], _LOWER[:7], _UPPER[:7])):
                p.resetJointState(self.robot, j, float(qj), physicsClientId=c)
        self.objects = [self._add_object(o) for o in scene.objects]
        pos, orn = self._ee_pose()
        self.target_pos, self.target_rpy = pos, self._relative_rpy(orn)
        self.gripper_command = 1.0
        self._apply_targets()
        for _ in range(cfg.substeps):  # let the objects settle on the table
            p.stepSimulation(physicsClientId=c)
        return self.observe()

    def _add_object(self, spec) -> int:
        p, c, s = self.p, self.client, self.cfg.object_size
        rgba = [*COLOURS[spec.colour], 1.0]
        if spec.shape == "cube":
            geom = dict(shapeType=p.GEOM_BOX, halfExtents=[s / 2] * 3)
            vis = p.createVisualShape(rgbaColor=rgba, physicsClientId=c, **geom)
        else:
            geom = dict(shapeType=p.GEOM_CYLINDER, radius=s / 2, height=s)
            vis = p.createVisualShape(rgbaColor=rgba, length=s, physicsClientId=c, shapeType=p.GEOM_CYLINDER,
                                      radius=s / 2)
        col = p.createCollisionShape(physicsClientId=c, **geom)
        body = p.createMultiBody(0.08, col, vis, basePosition=[spec.x, spec.y, s / 2 + 1e-4],
                                 baseOrientation=p.getQuaternionFromEuler([0, 0, spec.yaw]), physicsClientId=c)
        p.changeDynamics(body, -1, lateralFriction=0.8, spinningFriction=0.001, rollingFriction=0.0001,
                         physicsClientId=c)
        return body

    # ------------------------------------------------------------------ control
    def clip_action(self, action) -> np.ndarray:
        """The action actually applied: float64 [7] clipped to the action-space limits."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values [dx dy dz droll dpitch dyaw gripper], "
                             f"got shape {np.shape(action)}")
        a = np.nan_to_num(a, nan=0.0)  # a NaN from a broken policy must not poison the simulation
        cfg = self.cfg
        a[:3] = np.clip(a[:3], -cfg.max_delta_pos, cfg.max_delta_pos)
        a[3:6] = np.clip(a[3:6], -cfg.max_delta_rot, cfg.max_delta_rot)
        a[6] = np.clip(a[6], 0.0, 1.0)
        return a

    def step(self, action) -> dict[str, np.ndarray]:
        """Apply one 7-DoF action (clipped), run one control period of physics, return the observation."""
        a = self.clip_action(action)
        cfg = self.cfg
        self.target_pos = np.clip(self.target_pos + a[:3], cfg.workspace_low, cfg.workspace_high)
        limits = np.array([cfg.max_tilt, cfg.max_tilt, cfg.max_yaw])
        self.target_rpy = np.clip(self.target_rpy + a[3:6], -limits, limits)
        self.gripper_command = float(a[6])
        self._apply_targets()
        for _ in range(cfg.substeps):
            self.p.stepSimulation(physicsClientId=self.client)
        self._update_grasp()
        return self.observe()

    def _apply_targets(self) -> None:
        p, c = self.p, self.client
        orn = self._absolute_orn(self.target_rpy)
        q = p.calculateInverseKinematics(
            self.robot, EE_LINK, self.target_pos.tolist(), orn, lowerLimits=_LOWER, upperLimits=_UPPER,
            jointRanges=_RANGES, restPoses=_REST, maxNumIterations=30, residualThreshold=1e-4,
            physicsClientId=c)
        arm = np.clip(np.asarray(q[:7]), _LOWER[:7], _UPPER[:7])  # joint limits, also where IK overshoots
        p.setJointMotorControlArray(self.robot, list(ARM_JOINTS), p.POSITION_CONTROL, targetPositions=arm.tolist(),
                                    forces=list(ARM_FORCES), positionGains=[0.3] * 7, physicsClientId=c)
        width = MAX_FINGER * self.gripper_command
        p.setJointMotorControlArray(self.robot, list(FINGER_JOINTS), p.POSITION_CONTROL, targetPositions=[width] * 2,
                                    forces=[40.0, 40.0], physicsClientId=c)

    def _update_grasp(self) -> None:
        """Grasp assist: attach an object touched by both fingers while closing on it; release on opening.

        Only an object that holds the fingers apart counts: closed fingers that push an object with
        their outer faces (the push task) touch it with both fingers too, but cannot grasp it."""
        p, c = self.p, self.client
        closing = self.gripper_command < 0.5
        if not closing and self._grasp_constraint is not None:
            p.removeConstraint(self._grasp_constraint, physicsClientId=c)
            self._grasp_constraint, self.held_object = None, None
        if closing and self._grasp_constraint is None and self._finger_opening() > MIN_GRASP_OPENING:
            for i, body in enumerate(self.objects):
                touching = [p.getContactPoints(self.robot, body, linkIndexA=f, physicsClientId=c)
                            for f in FINGER_JOINTS]
                if all(touching):
                    hand_pos, hand_orn = p.getLinkState(self.robot, HAND_LINK, physicsClientId=c)[4:6]
                    obj_pos, obj_orn = p.getBasePositionAndOrientation(body, physicsClientId=c)
                    inv_pos, inv_orn = p.invertTransform(hand_pos, hand_orn)
                    rel_pos, rel_orn = p.multiplyTransforms(inv_pos, inv_orn, obj_pos, obj_orn)
                    self._grasp_constraint = p.createConstraint(
                        self.robot, HAND_LINK, body, -1, p.JOINT_FIXED, [0, 0, 0], rel_pos, [0, 0, 0],
                        parentFrameOrientation=rel_orn, physicsClientId=c)
                    p.changeConstraint(self._grasp_constraint, maxForce=60.0, physicsClientId=c)
                    self.held_object = i
                    break

    def _finger_opening(self) -> float:
        """Metres between the hand's centre and the nearer finger (0 when closed)."""
        return min(self.p.getJointState(self.robot, f, physicsClientId=self.client)[0] for f in FINGER_JOINTS)

    # ------------------------------------------------------------------ state and rendering
    def _absolute_orn(self, rpy) -> tuple:
        rel = self.p.getQuaternionFromEuler(list(rpy))
        return self.p.multiplyTransforms([0, 0, 0], rel, [0, 0, 0], self._down)[1]

    def _relative_rpy(self, orn) -> np.ndarray:
        p = self.p
        inv_down = p.invertTransform([0, 0, 0], self._down)[1]
        rel = p.multiplyTransforms([0, 0, 0], orn, [0, 0, 0], inv_down)[1]
        return np.asarray(p.getEulerFromQuaternion(rel))

    def _ee_pose(self) -> tuple[np.ndarray, tuple]:
        state = self.p.getLinkState(self.robot, EE_LINK, computeForwardKinematics=1, physicsClientId=self.client)
        return np.asarray(state[4]), state[5]

    def object_pose(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Position [3] and quaternion [4] (x y z w) of the scene's object `index`."""
        pos, orn = self.p.getBasePositionAndOrientation(self.objects[index], physicsClientId=self.client)
        return np.asarray(pos), np.asarray(orn)

    def object_up_z(self, index: int) -> float:
        """z component of the object's up axis: 1 upright, 0 on its side."""
        orn = self.object_pose(index)[1]
        return float(np.asarray(self.p.getMatrixFromQuaternion(orn)).reshape(3, 3)[2, 2])

    def touching(self, index: int, other: int | None = None) -> bool:
        """Whether object `index` touches object `other` (or the robot when `other` is None)."""
        b = self.objects[other] if other is not None else self.robot
        return bool(self.p.getContactPoints(self.objects[index], b, physicsClientId=self.client))

    def gripper_width(self) -> float:
        return float(sum(self.p.getJointState(self.robot, j, physicsClientId=self.client)[0] for j in FINGER_JOINTS))

    def state(self) -> np.ndarray:
        """Proprioception float32 [14]: ee xyz, ee rpy (relative to pointing down), gripper width, 7 joints."""
        pos, orn = self._ee_pose()
        joints = [s[0] for s in self.p.getJointStates(self.robot, list(ARM_JOINTS), physicsClientId=self.client)]
        return np.concatenate([pos, self._relative_rpy(orn), [self.gripper_width()], joints]).astype(np.float32)

    def render(self, wrist: bool = False) -> np.ndarray:
        """RGB uint8 [H, W, 3] from the fixed camera (or the wrist camera)."""
        p, cfg = self.p, self.cfg
        if wrist:
            pos, orn = p.getLinkState(self.robot, HAND_LINK, physicsClientId=self.client)[4:6]
            rot = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
            eye = np.asarray(pos) + rot @ [0.05, 0.0, 0.02]  # beside the hand, looking along the fingers
            view = p.computeViewMatrix(eye.tolist(), (eye + rot @ [0, 0, 0.2]).tolist(), (rot @ [1, 0, 0]).tolist())
        else:
            offset = self.scene.camera_offset if self.scene else (0.0, 0.0, 0.0)
            eye = [e + o for e, o in zip(cfg.camera.eye, offset)]
            view = p.computeViewMatrix(eye, cfg.camera.target, cfg.camera.up)
        light = list(self.scene.light_direction) if self.scene else [0.4, -0.3, 1.0]
        size = cfg.image_size
        _, _, rgba, _, _ = p.getCameraImage(size, size, view, self._proj, renderer=p.ER_TINY_RENDERER,
                                            lightDirection=light, shadow=int(cfg.shadows),
                                            flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client)
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()

    def observe(self) -> dict[str, np.ndarray]:
        obs = {"image": self.render(), "state": self.state()}
        if self.cfg.wrist_camera:
            obs["wrist_image"] = self.render(wrist=True)
        return obs

    def close(self) -> None:
        if self.client >= 0:
            self.p.disconnect(physicsClientId=self.client)
            self.client = -1

    def __enter__(self) -> TabletopWorld:
        return self

    def __exit__(self, *_) -> None:
        self.close()


# IK null-space settings for the 9 movable joints (7 arm + 2 fingers), from the URDF's limits.
_LOWER = [-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671, 0.0, 0.0]
_UPPER = [2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671, 0.04, 0.04]
_RANGES = [u - lo for lo, u in zip(_LOWER, _UPPER)]
_REST = [*HOME_JOINTS, MAX_FINGER, MAX_FINGER]

# Robot colours: a mid-grey arm and a light hand, both far from the objects' colours and the table's.
_ROBOT_COLOURS = {**{i: [0.55, 0.57, 0.6, 1.0] for i in range(-1, 7)}, HAND_LINK: [0.85, 0.85, 0.88, 1.0],
                  9: [0.15, 0.15, 0.15, 1.0], 10: [0.15, 0.15, 0.15, 1.0]}


def robot_urdf(data_path: str, mesh: str = "simple") -> str:
    """Path of the Panda URDF; for `simple`, a copy whose visuals are the convex collision meshes.

    TinyRenderer's cost grows with triangles: the detailed visual meshes have ~100k, the collision
    meshes ~3.5k, which makes rendering several times faster at 64-256 px with the same silhouette.
    The copy lives in the temp directory (written atomically, reused by later calls).
    """
    import hashlib
    import os
    import tempfile

    from lapa.io import write_text_atomic

    src = os.path.join(data_path, "franka_panda", "panda.urdf")
    if mesh == "detailed":
        return src
    meshes = os.path.join(data_path, "franka_panda", "meshes")
    path = os.path.join(tempfile.gettempdir(), f"lapa_sim_panda_{hashlib.md5(meshes.encode()).hexdigest()[:10]}.urdf")
    if not os.path.exists(path):
        with open(src) as f:
            text = f.read()
        text = text.replace("package://meshes/visual/", "package://meshes/collision/")
        write_text_atomic(path, text.replace("package://meshes/", meshes + "/"))
    return path
