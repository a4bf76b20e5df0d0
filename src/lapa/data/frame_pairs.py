"""Frame-pair shards (Stage 1 input, written by `lapa ingest`; DESIGN.md section 5).

    KEY.t.jpg        frame t
    KEY.t1.jpg       frame t + offset
    KEY.json         {video_id, frame_idx, frame_idx_t1, offset, fps, source, src_frame_t, src_frame_t1,
                      resize_mode, [task]}
    KEY.txt          optional: the video's instruction
    KEY.action.npy   optional, evaluation only: float32 [7], the pair action (`manifest.pair_action`)

Training batches: {"frames": float32 [B, 3, 2, H, W] in [0, 1]}; frames t and t1 stacked on axis 2.
Flips are allowed: the videos carry no action label, and a pair is mirrored as a whole.
Inference batches (`lapa label`, `lapa eval-laq`; `loader.frame_pair_loader`): `collate_inference`.
"""

from __future__ import annotations

import numpy as np
import torch

from lapa.data.formats import ShardFormat, read_action, read_json, read_text
from lapa.data.skips import has_parts

FRAME_T, FRAME_T1, META, TEXT, ACTION = "t.jpg", "t1.jpg", "json", "txt", "action.npy"
REQUIRED = (FRAME_T, FRAME_T1, META)
OPTIONAL = (TEXT, ACTION)
IMAGE_PARTS = (FRAME_T, FRAME_T1)  # decoded into [B, 3, 2, H, W] in this order


def training_fields(sample: dict) -> dict | None:
    """Training keeps nothing of a pair but its frames (decoded by the batch engine)."""
    return {} if has_parts(sample, REQUIRED) else None


def collate(images: torch.Tensor, rows: list[dict]) -> dict:
    """uint8 `[B, 3, 2, H, W]` -> {"frames": ...} (made float by `FloatBatches`)."""
    return {"frames": images}


FRAME_PAIRS = ShardFormat(name="frame_pairs", required=REQUIRED, optional=OPTIONAL, image_parts=IMAGE_PARTS,
                          image_key="frames", flips=True, fields=training_fields, collate=collate)


# ---- inference: everything `lapa label` copies into latent-labelled shards ----------------------------
def inference_fields(sample: dict) -> dict | None:
    """Key, metadata, instruction, optional pair action and frame t's JPEG; None (counted) if corrupt."""
    if not has_parts(sample, REQUIRED):
        return None
    meta, text = read_json(sample, META), read_text(sample, TEXT)
    if meta is None or text is None:
        return None
    action = None
    if ACTION in sample:
        action = read_action(sample, ACTION)
        if action is None:
            return None
    return {"key": sample["__key__"], "meta": meta, "instruction": text, "action": action,
            "t_jpeg": sample[FRAME_T]}


def collate_inference(images: torch.Tensor, rows: list[dict]) -> dict:
    """{"frames": uint8 [B, 3, 2, H, W], "key": list[str], "meta": list[dict], "instruction": list[str]
    ("" when absent), "action": float32 [B, 7] or None (when any sample lacks one), "t_jpeg": list[bytes]
    (frame t's JPEG, copied unchanged into labelled shards)}."""
    actions = [row["action"] for row in rows]
    has_action = all(a is not None for a in actions)
    return {
        "frames": images,
        "key": [row["key"] for row in rows],
        "meta": [row["meta"] for row in rows],
        "instruction": [row["instruction"] for row in rows],
        "action": torch.as_tensor(np.stack(actions)) if has_action else None,
        "t_jpeg": [row["t_jpeg"] for row in rows],
    }
