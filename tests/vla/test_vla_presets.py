"""The model presets of conf/vla_model compose into valid VLAConfigs; only the tiny one is built."""

from __future__ import annotations

import time

import pytest
import torch
from vla_tiny import INSTRUCTIONS, images

from lapa.config import ConfigError
from lapa.vla import VLA, load_vla_config


@pytest.mark.parametrize("preset,lm,backbones,sizes", [
    ("vla_debug", None, [None, None], [None, None]),
    ("vla_1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
     ["google/siglip-base-patch16-224", "facebook/dinov2-base"], [None, 196]),
    ("vla_7b", "meta-llama/Llama-2-7b-hf", ["google/siglip-so400m-patch14-224", "facebook/dinov2-large"], [None, 224]),
])
def test_presets_compose(preset, lm, backbones, sizes):
    cfg = load_vla_config(preset)
    assert cfg.stage == 2 and cfg.lm.name_or_path == lm
    assert [b.family for b in cfg.vision.backbones] == ["siglip", "dinov2"]
    assert [b.name_or_path for b in cfg.vision.backbones] == backbones
    assert [b.image_size for b in cfg.vision.backbones] == sizes
    assert (cfg.head.num_queries, cfg.head.outputs_per_query, cfg.head.num_classes) == (4, 1, 8)
    assert cfg.prompt.template == "What action should the robot take to {instruction}?"
    assert cfg.tokenizer == ("builtin" if preset == "vla_debug" else None)


def test_overrides_are_validated():
    cfg = load_vla_config("vla_debug", ["lm.hf_config.num_hidden_layers=1", "attn_implementation=eager"])
    assert cfg.lm.hf_config["num_hidden_layers"] == 1 and cfg.attn_implementation == "eager"
    with pytest.raises(ConfigError, match="head.num_classes"):
        load_vla_config("vla_debug", ["head.num_classes=1"])
    with pytest.raises(ConfigError, match="not_a_key"):
        load_vla_config("vla_debug", ["not_a_key=1"])


def test_debug_preset_runs_in_seconds_on_cpu():
    torch.manual_seed(0)
    start = time.perf_counter()
    m = VLA(load_vla_config("vla_debug"))
    enc = m.tokenize(INSTRUCTIONS)
    loss = m.loss(m(images(4, size=128), **enc), torch.zeros(4, 4, dtype=torch.long))
    loss.backward()
    assert time.perf_counter() - start < 30  # generous: 2 shared CPU cores (~0.5 s measured, import aside)
    assert m.num_vision_tokens == 64 and m.lm.config.vocab_size == len(m.tokenizer) == 2048
    counts = m.parameter_counts()
    assert 0.5e6 < counts["total"] < 1e6, counts
