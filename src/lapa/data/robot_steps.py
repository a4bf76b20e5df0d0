"""Robot-step shards (Stage 3 input, e.g. `lapa sim generate` demos; DESIGN.md section 5).

    KEY.jpg          the camera image at step t
    KEY.txt          the instruction
    KEY.action.npy   float32 [7]: x y z roll pitch yaw gripper (end-effector deltas, gripper command)
    KEY.json         {episode_id, step, task}
    KEY.state.npy    optional: the robot state (not batched)
    KEY.wrist.jpg    optional: the wrist camera at step t (not batched)

Batches: {"image": float32 [B, 3, H, W] in [0, 1], "text": list[str], "actions": float32 [B, 7],
"episode_id": list[str], "step": int64 [B]}. Never flipped: a mirror image would contradict the y, roll
and yaw of its action. A sample whose action is not 7 finite numbers, or whose json lacks its episode
and step, is skipped and counted (`formats.read_action`).
"""

from __future__ import annotations

import numpy as np
import torch

from lapa.data.formats import ShardFormat, read_action, read_json, read_text
from lapa.data.skips import has_parts, skip, where

IMAGE, TEXT, ACTION, META, STATE, WRIST = "jpg", "txt", "action.npy", "json", "state.npy", "wrist.jpg"
REQUIRED = (IMAGE, TEXT, ACTION, META)
OPTIONAL = (STATE, WRIST)


def fields(sample: dict) -> dict | None:
    """Text, action and episode/step of a step; None (counted) if any is missing or corrupt."""
    if not has_parts(sample, REQUIRED):
        return None
    text, action, meta = read_text(sample, TEXT), read_action(sample, ACTION), read_json(sample, META)
    if text is None or action is None or meta is None:
        return None
    episode, step = meta.get("episode_id"), meta.get("step")
    if not isinstance(episode, str) or not isinstance(step, int) or isinstance(step, bool):
        return skip("bad meta", f"{where(sample)}: needs episode_id (str) and step (int), got {meta}")
    return {"text": text, "action": action, "episode_id": episode, "step": step}


def collate(images: torch.Tensor, rows: list[dict]) -> dict:
    """uint8 images `[B, 3, 1, H, W]` (made float `[B, 3, H, W]` by `FloatBatches`) and the rows' fields."""
    return {"image": images, "text": [row["text"] for row in rows],
            "actions": torch.as_tensor(np.stack([row["action"] for row in rows])),  # float32 [B, 7]
            "episode_id": [row["episode_id"] for row in rows],
            "step": torch.tensor([row["step"] for row in rows], dtype=torch.int64)}


ROBOT_STEPS = ShardFormat(name="robot_steps", required=REQUIRED, optional=OPTIONAL, image_parts=(IMAGE,),
                          image_key="image", flips=False, fields=fields, collate=collate)
