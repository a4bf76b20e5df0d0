"""The built-in simulated robot world (DESIGN.md section 7): a pybullet tabletop with a Franka Panda.

- `config`: `SimConfig`, `CameraConfig` (camera, control, action limits, scene randomisation).
- `world`: `TabletopWorld` (action space, gripper convention, observations).
- `scene`: random scenes (objects of distinct colour + shape) by seed.
- `tasks`: task families with templated instructions and success checks.
- `policies`: the scripted oracle and the random baseline, registered as `oracle` and `random` in the
  policy registry (`lapa.policy.get_policy`) when this package is imported.
- `rollout`: `run_episode` (frames, actions, states, success).
- `parallel`: one world per worker process, episodes spread over processes.
- `generate`: the `lapa sim generate` command. Closed-loop evaluation (`lapa sim eval`) drives the
  simulator from above: `lapa.eval.closed_loop`.
"""

from lapa.sim.config import CameraConfig, SimConfig
from lapa.sim.policies import OracleConfig, RandomPolicy, ScriptedOracle
from lapa.sim.rollout import Episode, run_episode
from lapa.sim.tasks import FAMILIES, Task, make_task
from lapa.sim.world import ACTION_DIM, STATE_DIM, TabletopWorld

__all__ = ["ACTION_DIM", "STATE_DIM", "CameraConfig", "Episode", "FAMILIES", "OracleConfig", "RandomPolicy",
           "ScriptedOracle", "SimConfig", "TabletopWorld", "Task", "make_task", "run_episode"]
