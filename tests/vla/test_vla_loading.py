"""The real loading path, honestly: tiny HF checkpoints written with `save_pretrained` (the
`checkpoints` fixture of conftest.py: a full SigLIP model as on the hub, a DINOv2 model with a
preprocessor_config.json, a Llama *ForCausalLM* with its tokenizer) loaded by path through our configs
and registry."""

from __future__ import annotations

import pytest
import torch
from vla_tiny import INSTRUCTIONS, images

from lapa.config import ConfigError, to_dict, to_schema
from lapa.vla import VLA, BackboneConfig, VLAConfig, get_backbone, to_unit_pixels


def test_backbones_load_by_path(checkpoints):
    root, siglip, dino, _ = checkpoints
    bb = get_backbone(BackboneConfig("siglip", str(root / "siglip")))
    assert bb.image_size == 32 and bb.config.mean == [0.5, 0.5, 0.5]  # no preprocessor: family defaults
    assert bb.config.hf_config["num_hidden_layers"] == 3 and len(bb.model.encoder.layers) == 2  # -2: 2 of 3
    ours = bb.model.state_dict()
    for name, value in siglip.vision_model.state_dict().items():
        if name in ours:
            assert torch.equal(ours[name], value), name
    pixels = to_unit_pixels(images(2, size=32))
    with torch.no_grad():
        ref = siglip.vision_model(pixel_values=bb.preprocess(pixels), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(bb.features(pixels), ref)
    alone = get_backbone(BackboneConfig("siglip", str(root / "siglip_vision")))
    assert torch.equal(alone.features(pixels), bb.features(pixels))

    d = get_backbone(BackboneConfig("dinov2", str(root / "dinov2")))
    assert (d.image_size, d.resample) == (24, "bilinear")
    assert d.config.mean == [0.4, 0.5, 0.6] and d.config.std == [0.2, 0.25, 0.3]
    assert d.num_patches == 9  # 24 px / 8 -> 3x3, from the preprocessor's crop size
    assert torch.equal(d.model.embeddings.cls_token, dino.embeddings.cls_token)
    d = get_backbone(BackboneConfig("dinov2", str(root / "dinov2"), image_size=32, mean=[0.5] * 3))
    assert d.num_patches == 16 and d.config.mean == [0.5] * 3 and d.config.std == [0.2, 0.25, 0.3]
    with pytest.raises(ConfigError, match="not DINOv2"):
        get_backbone(BackboneConfig("dinov2", str(root / "llama")))


def test_vla_loads_every_part_by_path(checkpoints):
    root, siglip, dino, llama = checkpoints
    cfg = to_schema({
        "vision": {"backbones": [{"family": "siglip", "name_or_path": str(root / "siglip")},
                                 {"family": "dinov2", "name_or_path": str(root / "dinov2"), "image_size": 32}]},
        "lm": {"name_or_path": str(root / "llama")},
        "tokenizer": None,  # the LM's own, from the same directory
    }, VLAConfig)
    m = VLA(cfg)
    assert type(m.lm).__name__ == "LlamaModel"  # the body only, out of a ForCausalLM checkpoint
    assert not any(name.startswith("lm_head") for name, _ in m.lm.named_parameters())
    assert torch.equal(m.lm.get_input_embeddings().weight, llama.model.embed_tokens.weight)
    assert torch.equal(m.lm.layers[1].mlp.up_proj.weight, llama.model.layers[1].mlp.up_proj.weight)
    assert m.bos_token_id == 1 and len(m.tokenizer) == 2048
    assert m.config.lm.hf_config["model_type"] == "llama" and m.config.lm.hf_config["hidden_size"] == 32
    logits = m(images(2), **m.tokenize(INSTRUCTIONS[:2]))
    assert logits.shape == (2, 4, 8) and torch.isfinite(logits).all()

    # The resolved config (full HF config dicts as "overrides") loads the same checkpoints again.
    again = VLA(to_schema(to_dict(m.config), VLAConfig), load_weights=True)
    assert again.config == m.config
    pretrained = {k: v for k, v in m.state_dict().items() if k.startswith(("vision.", "lm."))}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in pretrained.items())
