"""What a loader needs to know about a shard format (DESIGN.md section 5): `ShardFormat`.

Each format has its own module, which defines its parts, reads and validates a sample's fields and
collates batches: `frame_pairs.FRAME_PAIRS` (Stage 1), `latent_labelled.LATENT_LABELLED` (Stage 2),
`robot_steps.ROBOT_STEPS` (Stage 3). Loaders take one of these instead of a stage name.

The decode engine (`batching.Batches`) decodes a sample's `image_parts` (T JPEGs) into its slot of a
planar uint8 batch `[B, 3, T, H, W]`, keeps what `fields(sample)` returns of the rest, and hands both to
`collate(images, rows)`, which puts the images under `image_key`. The float stage
(`float_batches.FloatBatches`) turns them into float32 in [0, 1]: `[B, 3, T, H, W]`, or `[B, 3, H, W]`
when the format has one image part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lapa.data.shards import decode_npy
from lapa.data.skips import skip, where


@dataclass(frozen=True)
class ShardFormat:
    """One shard format. Picklable (module-level functions or partials of them): it travels into
    spawned DataLoader workers."""

    name: str
    required: tuple[str, ...]  # parts every sample has (the writers' contract); else "missing part"
    optional: tuple[str, ...]  # parts a sample may have
    image_parts: tuple[str, ...]  # JPEG parts decoded into the batch, in frame order (T of them)
    image_key: str  # batch key of the images
    flips: bool  # whether training may mirror images: never when the label has a direction
    # sample -> what the batch keeps of it besides the images; None: corrupt (counted by the reader)
    fields: Callable[[dict], dict | None]
    # (images uint8 [B, 3, T, H, W], rows of `fields`) -> the batch
    collate: Callable[[torch.Tensor, list[dict]], dict]

    @property
    def single_image(self) -> bool:
        """One image per sample: float batches drop the T axis (`[B, 3, H, W]`)."""
        return len(self.image_parts) == 1


# ---- readers of the parts several formats share; each returns None (counted) when the part is corrupt ----
ACTION_DIM = 7  # robot action layout: x y z roll pitch yaw (end-effector deltas), gripper command


def read_text(sample: dict, part: str = "txt") -> str | None:
    """The UTF-8 text of `part` ("" when the sample has none)."""
    try:
        return sample.get(part, b"").decode("utf-8")
    except UnicodeDecodeError as err:
        return skip("bad text", f"{where(sample)}: {err}")


def read_json(sample: dict, part: str = "json") -> dict | None:
    """The JSON object of `part` ({} when the sample has none)."""
    if part not in sample:
        return {}
    try:
        value = json.loads(sample[part])
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        return skip("bad meta", f"{where(sample)}: {err}")
    if not isinstance(value, dict):
        return skip("bad meta", f"{where(sample)}: a {type(value).__name__}, not an object")
    return value


def read_npy(sample: dict, part: str) -> np.ndarray | None:
    """The array of a `.npy` part (no pickles)."""
    try:
        return decode_npy(sample[part])
    except Exception as err:  # numpy raises several types for corrupt .npy data
        return skip("bad sample", f"{where(sample)}: .{part}: {type(err).__name__}: {err}")


def read_action(sample: dict, part: str = "action.npy") -> np.ndarray | None:
    """float32 [7] action of `part` (robot steps; the pair action of frame pairs); None (counted as
    "bad action") unless it is 7 finite numbers."""
    value = read_npy(sample, part)
    if value is None:
        return None
    if value.shape != (ACTION_DIM,) or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
        return skip("bad action", f"{where(sample)}: {value.dtype} {list(value.shape)} {value!r}")
    return value.astype(np.float32)
