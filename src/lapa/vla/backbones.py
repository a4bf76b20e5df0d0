"""Frozen vision backbones of the VLA (DESIGN.md section 8, spec 2.2.1): a plain-dict registry
(`BACKBONES`, `get_backbone`) of SigLIP and DINOv2 and the fused backbone that concatenates their
patch features, as OpenVLA's Prismatic `DinoSigLIPViTBackbone` does.

A backbone is loaded from a HF name or local directory (`google/siglip-so400m-patch14-224`,
`facebook/dinov2-large`, a `save_pretrained` folder) or built from an HF config dict at random init
(tiny test and debug models). Every backbone

- takes raw images (uint8 [B, H, W, 3] or [B, 3, H, W], or float [B, 3, H, W] in [0, 1]) and applies
  its own square resize and normalisation in plain torch (no HF image processors: their fast variants
  need torchvision, which lapa never installs). Resizing the whole frame (no centre crop) keeps the
  robot's full field of view, as OpenVLA's "resize-naive" does;
- returns the patch tokens of one hidden layer (`feature_layer`, an index into HF's `hidden_states`:
  -2 = output of the second-to-last block, Prismatic's choice) without the CLS/register tokens.
  The blocks after that layer, the final norm and SigLIP's pooling head are never used, so they are
  not even built (cheaper, and parameter counts for MFU stay honest); the result equals
  `hidden_states[feature_layer]` of the full model (tests/vla/test_backbones.py checks it);
- is frozen: no gradients, eval mode that `.train()` cannot undo, forward under `torch.no_grad()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lapa.config import ConfigError, require
from lapa.vla.hf import apply_overrides, quiet_transformers

_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes used in HF preprocessor_config.json


@dataclass
class BackboneConfig:
    """One vision backbone. Unset fields (None) are resolved when it is built and then stored, so an
    exported model rebuilds offline from its config.json alone."""

    family: str = "siglip"  # key of BACKBONES
    # HF hub name or local directory; None = build from `hf_config` with random init.
    name_or_path: str | None = "google/siglip-so400m-patch14-224"
    # With `name_or_path`: overrides of the checkpoint's config; without: the whole HF config (tiny
    # models). Resolved to the full config dict of the checkpoint.
    hf_config: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # square input side in px; None = checkpoint preprocessor / family default
    feature_layer: int = -2  # index into hidden_states (0 = embeddings, -1 = last block)
    mean: list[float] | None = None  # per channel, on pixels in [0, 1]; None = preprocessor / family default
    std: list[float] | None = None
    resample: str | None = None  # "bilinear" | "bicubic"; None = preprocessor / family default

    def __post_init__(self) -> None:
        require(self.family in BACKBONES, "family", self.family, f"must be one of {sorted(BACKBONES)}")
        require(self.name_or_path is not None or bool(self.hf_config), "hf_config", self.hf_config,
                "needs the HF config of the backbone when name_or_path is null (build from config)")
        require(self.image_size is None or self.image_size > 0, "image_size", self.image_size, "must be > 0")
        for key in ("mean", "std"):
            value = getattr(self, key)
            require(value is None or len(value) == 3, key, value, "must be 3 numbers (R, G, B)")
        require(self.std is None or min(self.std) > 0, "std", self.std, "must be > 0")
        require(self.resample in (None, "bilinear", "bicubic"), "resample", self.resample,
                "must be bilinear or bicubic")


def to_unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] / [B, 3, H, W] or float [B, 3, H, W] in [0, 1] -> float32 [B, 3, H, W] in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dim() != 4:
        raise ValueError(f"images must be batched [B, H, W, 3] or [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[1] != 3 and images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)  # [B, H, W, 3] -> [B, 3, H, W]
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    if images.shape[1] != 3:
        raise ValueError(f"float images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    return images.float()


def _read_preprocessor(name_or_path: str) -> dict:
    """The checkpoint's preprocessor_config.json as a dict ({} when it has none)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except OSError:
        path = None
    return json.loads(open(path).read()) if path else {}


def _preprocessor_size(pre: dict) -> int | None:
    """The square side the checkpoint's processor feeds the model (its crop when it centre-crops)."""
    size = pre.get("crop_size") if pre.get("do_center_crop") else pre.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return int(size) if size else None


class VisionBackbone(nn.Module):
    """A frozen HF vision transformer that maps images to patch features [B, num_patches, feature_dim]."""

    family: ClassVar[str]
    final_norm: ClassVar[str]  # attribute of the HF model holding the norm after the last block
    default_mean: ClassVar[tuple[float, float, float]]
    default_std: ClassVar[tuple[float, float, float]]
    default_resample: ClassVar[str] = "bicubic"

    def __init__(self, cfg: BackboneConfig, attn_implementation: str = "sdpa", load_weights: bool = True) -> None:
        super().__init__()
        from transformers import AutoModel

        pretrained = load_weights and cfg.name_or_path is not None
        pre = _read_preprocessor(cfg.name_or_path) if pretrained else {}
        hf = self._load_hf_config(cfg.name_or_path) if pretrained else self._hf_config_from_dict(dict(cfg.hf_config))
        if pretrained:
            apply_overrides(hf, cfg.hf_config)  # user overrides of the checkpoint's config
        full = hf.to_dict()  # what the export stores: rebuilding from it applies the same truncation

        depth = hf.num_hidden_layers
        keep = cfg.feature_layer if cfg.feature_layer >= 0 else depth + 1 + cfg.feature_layer
        require(1 <= keep <= depth, "feature_layer", cfg.feature_layer,
                f"must pick one of the {depth} blocks (1..{depth} or -1..-{depth})")
        hf.num_hidden_layers = keep  # blocks after the feature layer are never built
        self._drop_unused(hf)
        if pretrained:
            with quiet_transformers():
                model = AutoModel.from_pretrained(cfg.name_or_path, config=hf, attn_implementation=attn_implementation,
                                                  dtype=torch.float32)
        else:
            model = AutoModel.from_config(hf, attn_implementation=attn_implementation)
        setattr(model, self.final_norm, nn.Identity())  # features are taken before the final norm
        self.model = model

        image_size = cfg.image_size or _preprocessor_size(pre) or self._default_image_size(hf)
        self.patch_size = int(hf.patch_size)
        require(image_size % self.patch_size == 0, "image_size", image_size,
                f"must be a multiple of the {cfg.family} patch size {self.patch_size}")
        self.image_size = image_size
        self.grid = image_size // self.patch_size  # patches per side
        self.num_patches = self.grid**2  # e.g. 224 px / 14 = 16 -> 256 patches
        self.num_prefix_tokens = self._num_prefix_tokens(hf)  # CLS/register tokens dropped from the output
        self.feature_dim = int(hf.hidden_size)
        mean = cfg.mean or pre.get("image_mean") or list(self.default_mean)
        std = cfg.std or pre.get("image_std") or list(self.default_std)
        resample = cfg.resample or _RESAMPLE.get(pre.get("resample"), self.default_resample)
        self.resample = resample
        # Python floats, not buffers: `.to(bfloat16)` of the model must not round them, and using them
        # needs no host-to-device copy.
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.config = BackboneConfig(family=cfg.family, name_or_path=cfg.name_or_path, hf_config=full,
                                     image_size=image_size, feature_layer=cfg.feature_layer,
                                     mean=list(self.mean), std=list(self.std), resample=resample)
        self.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------------------ family hooks
    def _load_hf_config(self, name_or_path: str):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path)

    def _hf_config_from_dict(self, d: dict):
        raise NotImplementedError

    def _drop_unused(self, hf) -> None:
        """Switch off parts of the HF model that the patch features never use."""

    def _default_image_size(self, hf) -> int:
        return int(hf.image_size)

    def _num_prefix_tokens(self, hf) -> int:
        return 0

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state

    # ------------------------------------------------------------------------------ frozen module
    def train(self, mode: bool = True) -> VisionBackbone:
        """Frozen: stays in eval mode (no dropout, fixed norms) whatever the caller asks."""
        return super().train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_tokens(self) -> int:
        """Tokens the backbone's transformer processes per image (patches + CLS/registers): for FLOPs."""
        return self.num_patches + self.num_prefix_tokens

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> normalised [B, 3, S, S], S = image_size, in the weights' dtype."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode=self.resample,
                                   align_corners=False, antialias=True)
            pixels = pixels.clamp(0.0, 1.0)  # bicubic overshoots; PIL clamps too
        pixels = torch.stack([(pixels[:, c] - self.mean[c]) / self.std[c] for c in range(3)], dim=1)
        return pixels.to(next(self.parameters()).dtype)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> patch features [B, num_patches, feature_dim]."""
        hidden = self._run(self.preprocess(pixels))  # [B, num_prefix_tokens + num_patches, feature_dim]
        return hidden[:, self.num_prefix_tokens:]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (see `to_unit_pixels`) -> patch features [B, num_patches, feature_dim]."""
        # move the (uint8) images first: 4x fewer bytes to copy than float pixels
        return self.features(to_unit_pixels(torch.as_tensor(images).to(self.device)))


class SiglipBackbone(VisionBackbone):
    """SigLIP's vision tower (`SiglipVisionModel`); also loads out of a full SigLIP checkpoint."""

    family = "siglip"
    final_norm = "post_layernorm"
    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)

    def _load_hf_config(self, name_or_path: str):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig.from_pretrained(name_or_path)  # takes vision_config of a full SiglipConfig

    def _hf_config_from_dict(self, d: dict):
        from transformers import SiglipVisionConfig

        d.pop("model_type", None)
        return SiglipVisionConfig.from_dict(d)

    def _drop_unused(self, hf) -> None:
        hf.vision_use_head = False  # the attention-pooling head reads the last block only

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        # SigLIP's position embeddings are fixed to the config's image_size; other sizes interpolate them.
        interpolate = self.image_size != self.config.hf_config.get("image_size", self.image_size)
        return self.model(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state


class Dinov2Backbone(VisionBackbone):
    """DINOv2 (`Dinov2Model`, or `Dinov2WithRegistersModel` for checkpoints with register tokens)."""

    family = "dinov2"
    final_norm = "layernorm"
    default_mean = (0.485, 0.456, 0.406)  # ImageNet
    default_std = (0.229, 0.224, 0.225)
    model_types = ("dinov2", "dinov2_with_registers")

    def _load_hf_config(self, name_or_path: str):
        hf = super()._load_hf_config(name_or_path)
        if hf.model_type not in self.model_types:
            raise ConfigError(f"name_or_path={name_or_path!r}: a {hf.model_type} checkpoint, not DINOv2")
        return hf

    def _hf_config_from_dict(self, d: dict):
        from transformers import AutoConfig

        model_type = d.pop("model_type", "dinov2_with_registers" if d.get("num_register_tokens") else "dinov2")
        require(model_type in self.model_types, "hf_config.model_type", model_type,
                f"must be one of {self.model_types}")
        return AutoConfig.for_model(model_type, **d)

    def _default_image_size(self, hf) -> int:
        # DINOv2 checkpoints carry 518 px position embeddings (interpolated at any size) but their
        # preprocessor feeds 224 px crops; tiny configs use their own size.
        return min(int(hf.image_size), 224)

    def _num_prefix_tokens(self, hf) -> int:
        return 1 + int(getattr(hf, "num_register_tokens", 0))  # CLS (+ registers)


BACKBONES: dict[str, type[VisionBackbone]] = {"siglip": SiglipBackbone, "dinov2": Dinov2Backbone}


def get_backbone(cfg: BackboneConfig, attn_implementation: str = "sdpa", load_weights: bool = True) -> VisionBackbone:
    """Build the backbone `cfg` names; `load_weights=False` builds from `cfg.hf_config` alone (random
    init, e.g. before loading an export's weights)."""
    return BACKBONES[cfg.family](cfg, attn_implementation=attn_implementation, load_weights=load_weights)


def _default_backbones() -> list[BackboneConfig]:
    return [BackboneConfig("siglip", "google/siglip-so400m-patch14-224"),
            BackboneConfig("dinov2", "facebook/dinov2-large")]


@dataclass
class FusedBackboneConfig:
    """The vision side of the VLA: one or more backbones whose patch features are concatenated."""

    backbones: list[BackboneConfig] = field(default_factory=_default_backbones)

    def __post_init__(self) -> None:
        require(len(self.backbones) >= 1, "vision.backbones", self.backbones, "needs at least one backbone")


class FusedBackbone(nn.Module):
    """Backbones side by side on the same images; features concatenated per patch:
    [B, num_patches, sum of feature_dims] (SigLIP-SO400M 1152 + DINOv2-L 1024 = 2176)."""

    def __init__(self, cfg: FusedBackboneConfig, attn_implementation: str = "sdpa", load_weights: bool = True) -> None:
        super().__init__()
        self.backbones = nn.ModuleList(get_backbone(b, attn_implementation, load_weights) for b in cfg.backbones)
        grids = {f"{b.family}[{i}]": (b.image_size, b.patch_size, b.grid) for i, b in enumerate(self.backbones)}
        if len({g for _, _, g in grids.values()}) > 1:
            # Concatenating per patch needs the same grid; a user matches grids through image_size.
            sizes = ", ".join(f"{name}: {s} px / patch {p} = {g}x{g}" for name, (s, p, g) in grids.items())
            target = self.backbones[0].grid
            hint = ", ".join(f"vision.backbones[{i}].image_size={target * b.patch_size}"
                             for i, b in enumerate(self.backbones) if b.grid != target)
            raise ConfigError(f"vision.backbones: patch grids differ ({sizes}); features can only be concatenated "
                              f"patch by patch on the same grid. Set the image sizes so the grids match, e.g. {hint}")
        self.config = FusedBackboneConfig([b.config for b in self.backbones])
        self.num_patches = self.backbones[0].num_patches  # vision tokens the LM sees per image
        self.feature_dim = sum(b.feature_dim for b in self.backbones)

    def train(self, mode: bool = True) -> FusedBackbone:
        return super().train(False)  # frozen, see VisionBackbone.train

    def num_parameters(self) -> int:
        return sum(b.num_parameters() for b in self.backbones)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (see `to_unit_pixels`) -> fused patch features [B, num_patches, feature_dim]."""
        pixels = to_unit_pixels(torch.as_tensor(images).to(self.backbones[0].device))  # [B, 3, H, W] in [0, 1]
        return torch.cat([b.features(pixels) for b in self.backbones], dim=-1)  # [B, N, sum D_i]
