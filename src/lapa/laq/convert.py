"""Import a state dict in the published LAQ layout (`laq_openx.pt`) into a lapa checkpoint.

Our module names are the reference's (see `model.py`), so the conversion is: strip DDP `module.`
prefixes, infer the config from the tensor shapes, check the key set and every shape strictly (errors
list the offending keys; never a silent `strict=False`), and add NSVQ's bookkeeping buffers
(`vq.codebooks_used`, `vq.step`: zeros), the only keys of ours that the reference does not have.
The result uses pixel_convention "reference" ([0, 1] in, linear out), so it computes what the
published model computes.

    lapa convert-laq laq_openx.pt laq_openx.lapa.pt [image_size=256] [channels=3]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lapa.config import require, require_path
from lapa.laq.checkpoint import load_state_dict_strict, save_model
from lapa.laq.model import LAQ, LAQConfig, count_parameters
from lapa.laq.nsvq import cnn_output_side

log = logging.getLogger(__name__)

# Our keys that the reference layout lacks: NSVQ bookkeeping, filled with zeros on import.
BOOKKEEPING_KEYS = ("vq.codebooks_used", "vq.step")


@dataclass
class ConvertLAQConfig:
    """`lapa convert-laq SRC DST`: the image size and channels cannot be read off the weights."""

    src: str = ""  # reference-layout state dict (.pt), optionally with `module.` prefixes
    dst: str = ""  # our checkpoint, loadable with lapa.laq.load_model
    image_size: int = 256  # input size of the published model (cannot be read off the weights)
    channels: int = 3  # colour channels of the published model

    def __post_init__(self) -> None:
        require(bool(self.src), "src", self.src, "give the reference checkpoint: lapa convert-laq SRC DST")
        require(bool(self.dst), "dst", self.dst, "give the output path: lapa convert-laq SRC DST")
        require(self.image_size >= 1, "image_size", self.image_size, "must be >= 1")
        require(self.channels >= 1, "channels", self.channels, "must be >= 1")

    def check_inputs(self) -> None:
        """SRC exists (run by `lapa` before anything is written)."""
        require_path("src", self.src, "file", "the published LAQ state dict (.pt)")


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove a leading `module.` (DDP) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _need(sd: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise ValueError(f"reference state dict: missing key {key!r} (needed to infer the config)")
    return sd[key]


def _depth(sd: Mapping[str, Tensor], prefix: str) -> int:
    layers = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}\.layers\.(\d+)\.", k))}
    return max(layers) + 1 if layers else 0


def infer_config(state_dict: Mapping[str, Tensor], image_size: int = 256, channels: int = 3) -> LAQConfig:
    """An `LAQConfig` (pixel_convention "reference") from the shapes of a reference-layout state dict."""
    sd = strip_prefix(state_dict)
    dim, patch_in = _need(sd, "to_patch_emb_first_frame.2.weight").shape
    patch = math.isqrt(patch_in // channels)
    if patch * patch * channels != patch_in:
        raise ValueError(f"to_patch_emb_first_frame.2.weight: input width {patch_in} is not "
                         f"channels={channels} x patch^2")
    heads = _need(sd, "spatial_rel_pos_bias.net.2.weight").shape[0]
    dim_head = _need(sd, "enc_spatial_transformer.layers.0.1.q_scale").shape[0]
    codebook_size, quant_dim = _need(sd, "vq.codebooks").shape
    grid = image_size // patch
    kernel = _need(sd, "vq.cnn_encoder.2.weight").shape[-1]
    candidates = [n for n in ((1,) if kernel == 4 else (4, 16)) if cnn_output_side(grid, n) ** 2 == n]
    if not candidates:
        raise ValueError(f"vq.cnn_encoder.2.weight (kernel {kernel}) fits no action grid for a "
                         f"{grid}x{grid} patch grid; is image_size={image_size} right?")
    return LAQConfig(
        image_size=image_size, patch_size=patch, channels=channels, dim=dim, quant_dim=quant_dim,
        spatial_depth=_depth(sd, "enc_spatial_transformer"),
        temporal_depth=_depth(sd, "enc_temporal_transformer"),
        decoder_depth=_depth(sd, "dec_spatial_transformer"), heads=heads, dim_head=dim_head,
        codebook_size=codebook_size, code_seq_len=candidates[0], pixel_convention="reference")


def convert_reference_state_dict(state_dict: Mapping[str, Tensor], config: LAQConfig | None = None,
                                 image_size: int = 256, channels: int = 3) -> LAQ:
    """Build our `LAQ` holding the weights of a reference-layout state dict (eval mode).

    `config` defaults to `infer_config(state_dict, image_size, channels)`; a given config must use
    pixel_convention "reference" (what the published weights were trained with). Missing or unexpected
    keys and shape mismatches raise `ValueError` listing them.
    """
    sd = strip_prefix(state_dict)
    cfg = config if config is not None else infer_config(sd, image_size, channels)
    if cfg.pixel_convention != "reference":
        raise ValueError(f"model.pixel_convention={cfg.pixel_convention!r}: reference weights expect "
                         "'reference' (pixels in [0, 1], linear output)")
    model = LAQ(cfg)
    ours = model.state_dict()
    for key in BOOKKEEPING_KEYS:
        if key not in sd:
            sd[key] = torch.zeros_like(ours[key])
    load_state_dict_strict(model, sd, "reference state dict")
    return model.eval()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return dict(obj)


def run(cfg: ConvertLAQConfig) -> int:
    """Convert a reference-layout LAQ state dict (SRC) into a lapa checkpoint (DST)."""
    src, dst = Path(cfg.src), Path(cfg.dst)
    if not src.is_file():
        print(f"lapa convert-laq: {src} does not exist")
        return 2
    try:
        model = convert_reference_state_dict(_read_state_dict(src), image_size=cfg.image_size,
                                             channels=cfg.channels)
    except ValueError as err:
        print(f"lapa convert-laq: {err}")
        return 2
    save_model(model, dst)
    shown = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "replacement_steps"}
    print(f"lapa convert-laq: wrote {dst}\n  parameters: {count_parameters(model):,}\n  config: {shown}")
    return 0
