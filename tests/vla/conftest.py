"""Fixtures of the lapa.vla tests: one torch thread (the machines have 2 cores shared by all) and tiny
HF checkpoints on disk."""

from __future__ import annotations

import json

import pytest
import torch
from vla_tiny import DINOV2, LLAMA, SIGLIP

from lapa.vla import load_tokenizer


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Every test of this folder runs with one torch thread (`tests/conftest.py`'s `one_thread`)."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Directories laid out like the hub's google/siglip-*, facebook/dinov2-*, meta-llama/Llama-2-*."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM, SiglipConfig, SiglipModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config=SIGLIP))  # text + vision, as published
    siglip.save_pretrained(root / "siglip")
    siglip.vision_model.save_pretrained(root / "siglip_vision")  # a SiglipVisionModel on its own
    dino = Dinov2Model(Dinov2Config(**DINOV2))
    dino.save_pretrained(root / "dinov2")
    (root / "dinov2" / "preprocessor_config.json").write_text(json.dumps({
        "do_center_crop": True, "crop_size": {"height": 24, "width": 24}, "size": {"shortest_edge": 28},
        "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3], "resample": 2}))
    tok = load_tokenizer("builtin")
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "model_type"}, vocab_size=len(tok)))
    llama.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")  # the LM's own tokenizer beside it, as on the hub
    return root, siglip, dino, llama
