"""The built-in simulated robot world (DESIGN.md section 7): a pybullet tabletop with a Franka Panda.

- `world`: `TabletopWorld`, `SimConfig` (camera, control, action space and gripper convention).
- `scene`: random scenes (objects of distinct colour + shape) by seed.
- `tasks`: task families with templated instructions and success checks.
- `policies`: the policy interface, the scripted oracle, the random baseline, `get_policy`.
- `rollout`: `run_episode` (frames, actions, states, success).
- `generate` / `evaluate`: the `lapa sim generate` and `lapa sim eval` commands.
"""

from lapa.sim.policies import OracleConfig, RandomPolicy, ScriptedOracle, get_policy
from lapa.sim.rollout import Episode, run_episode
from lapa.sim.tasks import FAMILIES, Task, make_task
from lapa.sim.world import ACTION_DIM, STATE_DIM, CameraConfig, SimConfig, TabletopWorld

__all__ = ["ACTION_DIM", "STATE_DIM", "CameraConfig", "Episode", "FAMILIES", "OracleConfig", "RandomPolicy",
           "ScriptedOracle", "SimConfig", "TabletopWorld", "Task", "get_policy", "make_task", "run_episode"]
