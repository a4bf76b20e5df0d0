"""Tiny VLA configs and inputs shared by the tests of lapa.vla (a few hundred thousand parameters)."""

from __future__ import annotations

import torch

from lapa.config import to_schema
from lapa.vla import VLAConfig

# 32 px, 8 px patches -> a 4x4 grid (16 vision tokens) for both backbones.
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
DINOV2 = {"hidden_size": 24, "mlp_ratio": 2, "num_hidden_layers": 3, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}

INSTRUCTIONS = ["pick up the red cube", "push the blue cylinder over to the left",
                "put the yellow cylinder next to the green cube and then lift the orange cube", "lift it"]


def tiny_config(**overrides) -> VLAConfig:
    """A tiny VLAConfig built from HF configs (no weights anywhere); `overrides` merge on top."""
    cfg = {
        "vision": {"backbones": [{"family": "siglip", "name_or_path": None, "hf_config": dict(SIGLIP)},
                                 {"family": "dinov2", "name_or_path": None, "hf_config": dict(DINOV2)}]},
        "lm": {"name_or_path": None, "hf_config": dict(LLAMA)},
        "tokenizer": "builtin",
        "attn_implementation": "sdpa",
    }
    return to_schema({**cfg, **overrides}, VLAConfig)


def images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    """uint8 [n, size, size, 3] random frames (not the backbones' input size: they resize)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)
