"""A tiny Stage 3 export (the debug VLA at random init, an action tokenizer fitted on random actions) for the
tests of the policy, the server and export (imported by name). Nothing is trained: these tests check the
plumbing around the model, `tests/vla/test_finetune.py` checks what training gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lapa.vla import VLA, load_vla_config
from lapa.vla.action_tokenizer import ActionTokenizer
from lapa.vla.finetune_model import swap_head


def make_policy_export(directory: Path, chunk: int = 1, image_size: int | None = 64, seed: int = 0) -> Path:
    """Write a Stage 3 export of the debug VLA (64 px towers) with `chunk` actions per forward pass."""
    torch.manual_seed(seed)
    model = swap_head(VLA(load_vla_config("vla_debug")), chunk=chunk)
    with torch.no_grad():  # a head with large weights: different images and prompts give different bins
        model.head.proj.weight.normal_(0.0, 0.5)
    rng = np.random.default_rng(seed)
    actions = rng.normal(0, 0.02, (200, 7)).astype(np.float32)
    actions[:, 3:5] = 0.0  # rotations the data never uses: constant dimensions
    actions[:, 6] = rng.choice([-1.0, 1.0], 200)  # a binary gripper
    info = {"training": {"command": "test", "steps": 0, "action_chunk": chunk, "data": {"image_size": image_size}}}
    export = model.save_pretrained(directory, info=info)
    ActionTokenizer.fit(actions).save(export)
    return export
