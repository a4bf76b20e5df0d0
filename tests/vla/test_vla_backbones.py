"""Vision backbones: input formats, patch counts from the configs, features = the HF model's hidden
state of the chosen layer, the fused backbone's concatenation and grid check, frozen behaviour."""

from __future__ import annotations

import pytest
import torch
from vla_tiny import DINOV2, SIGLIP, images

from lapa.config import ConfigError, to_schema
from lapa.vla import BackboneConfig, FusedBackbone, FusedBackboneConfig, get_backbone, to_unit_pixels


def _cfg(family: str, hf: dict, **kw) -> BackboneConfig:
    return BackboneConfig(family=family, name_or_path=None, hf_config=dict(hf), **kw)


def test_input_formats_give_the_same_features():
    torch.manual_seed(0)
    bb = get_backbone(_cfg("siglip", SIGLIP))
    hwc = images(2, size=32)  # uint8 [2, 32, 32, 3]
    chw = hwc.permute(0, 3, 1, 2).contiguous()  # uint8 [2, 3, 32, 32]
    unit = chw.float() / 255  # float [2, 3, 32, 32] in [0, 1]
    a, b, c = bb(hwc), bb(chw), bb(unit)
    assert a.shape == (2, 16, 32)  # 32 px / 8 = 4x4 patches, SigLIP width 32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(ValueError, match="batched"):
        bb(hwc[0])
    with pytest.raises(ValueError, match="uint8 or float"):
        to_unit_pixels(hwc.int())


@pytest.mark.parametrize("family,hf,prefix", [("siglip", SIGLIP, 0), ("dinov2", DINOV2, 1),
                                               ("dinov2", {**DINOV2, "num_register_tokens": 2}, 3)])
@pytest.mark.parametrize("layer", [-2, -1, 1])
def test_features_are_the_hf_hidden_state_of_the_chosen_layer(family, hf, prefix, layer):
    """Our truncated model (blocks after the layer never built) gives exactly hidden_states[layer] of
    the full HF model without the CLS/register tokens."""
    from transformers import AutoModel

    torch.manual_seed(0)
    bb = get_backbone(_cfg(family, hf, feature_layer=layer))
    full_cfg = type(bb.model.config).from_dict({**bb.config.hf_config})
    full = AutoModel.from_config(full_cfg).eval()
    missing, unexpected = full.load_state_dict(bb.model.state_dict(), strict=False)
    assert not unexpected
    assert len(bb.model.encoder.state_dict()) < len(full.encoder.state_dict()) or layer == -1
    pixels = to_unit_pixels(images(2, size=32))
    with torch.no_grad():
        ref = full(pixel_values=bb.preprocess(pixels), output_hidden_states=True).hidden_states[layer]
    ours = bb.features(pixels)
    assert bb.num_prefix_tokens == prefix and ours.shape == (2, 16, hf["hidden_size"])
    torch.testing.assert_close(ours, ref[:, prefix:], rtol=1e-5, atol=1e-5)


def test_patch_counts_come_from_the_configs():
    bb = get_backbone(_cfg("siglip", {**SIGLIP, "image_size": 48, "patch_size": 6}))
    assert (bb.image_size, bb.grid, bb.num_patches, bb.num_tokens) == (48, 8, 64, 64)
    dino = get_backbone(_cfg("dinov2", {**DINOV2, "image_size": 518, "patch_size": 14}))
    assert (dino.image_size, dino.num_patches, dino.num_tokens) == (224, 256, 257)  # 224 px default, +CLS
    dino = get_backbone(_cfg("dinov2", {**DINOV2, "patch_size": 14}, image_size=196))
    assert dino.num_patches == 196 and dino(images(1, size=64)).shape == (1, 196, 24)
    with pytest.raises(ConfigError, match="multiple of the dinov2 patch size 14"):
        get_backbone(_cfg("dinov2", {**DINOV2, "patch_size": 14}, image_size=200))
    with pytest.raises(ConfigError, match="feature_layer"):
        get_backbone(_cfg("siglip", SIGLIP, feature_layer=-4))


def test_resize_and_normalisation():
    siglip = get_backbone(_cfg("siglip", SIGLIP))
    dino = get_backbone(_cfg("dinov2", DINOV2, resample="bilinear"))
    assert siglip.resample == "bicubic" and dino.resample == "bilinear"
    white = torch.ones(1, 3, 80, 60)  # any size, any aspect ratio -> the backbone's square input
    assert torch.allclose(siglip.preprocess(white), torch.ones(1, 3, 32, 32))  # (1 - 0.5) / 0.5
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(dino.preprocess(white)[0, :, 5, 5], expected)
    assert siglip.config.mean == [0.5, 0.5, 0.5] and dino.config.image_size == 32  # resolved into the config


def test_fused_backbone_concatenates_patch_features():
    torch.manual_seed(0)
    fused = FusedBackbone(FusedBackboneConfig([_cfg("siglip", SIGLIP), _cfg("dinov2", DINOV2)]))
    x = images(3)
    out = fused(x)
    assert out.shape == (3, 16, 32 + 24) and fused.num_patches == 16 and fused.feature_dim == 56
    torch.testing.assert_close(out[..., :32], fused.backbones[0](x))
    torch.testing.assert_close(out[..., 32:], fused.backbones[1](x))


def test_fused_backbone_refuses_mismatched_grids_and_accepts_matched_sizes():
    siglip16 = _cfg("siglip", {**SIGLIP, "image_size": 64, "patch_size": 16})  # 4x4
    dino14 = _cfg("dinov2", {**DINOV2, "patch_size": 14}, image_size=70)  # 5x5
    with pytest.raises(ConfigError, match=r"patch grids differ.*siglip\[0\]: 64 px / patch 16 = 4x4.*"
                                          r"dinov2\[1\]: 70 px / patch 14 = 5x5.*backbones\[1\].image_size=56"):
        FusedBackbone(FusedBackboneConfig([siglip16, dino14]))
    dino14.image_size = 56  # the suggested fix: 56 / 14 = 4
    assert FusedBackbone(FusedBackboneConfig([siglip16, dino14]))(images(1)).shape == (1, 16, 56)


def test_backbones_are_frozen():
    fused = FusedBackbone(FusedBackboneConfig([_cfg("siglip", SIGLIP), _cfg("dinov2", DINOV2)]))
    fused.train()
    assert not any(m.training for m in fused.modules())
    assert not any(p.requires_grad for p in fused.parameters())
    out = fused(images(1).float().permute(0, 3, 1, 2).div(255).requires_grad_())
    assert not out.requires_grad  # computed under no_grad


def test_config_validation():
    with pytest.raises(ConfigError, match="family"):
        to_schema({"family": "clip"}, BackboneConfig)
    with pytest.raises(ConfigError, match="hf_config"):
        to_schema({"name_or_path": None}, BackboneConfig)
    with pytest.raises(ConfigError, match="std"):
        to_schema({"std": [0.5, 0.0, 0.5]}, BackboneConfig)
