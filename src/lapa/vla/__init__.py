"""Stages 2 and 3: the vision-language-action model (DESIGN.md section 8).

- `backbones`: frozen SigLIP / DINOv2 registry (`BACKBONES`, `get_backbone`) and `FusedBackbone`.
- `projector`: LayerNorm -> Linear -> GELU -> Linear -> LayerNorm into the LM's width.
- `language_model`: any HF decoder-only LM without its LM head.
- `tokenizer` / `prompt`: the LM's tokenizer or the shipped small one; the prompt template.
- `heads`: ACT-token readout heads (Stage 2: latent tokens, Stage 3: binned actions).
- `model`: `VLAConfig`, `VLA` (one forward pass: images + prompts -> logits), `load_vla_config`.
- `export`: the export directory (`save_pretrained` / `from_pretrained`).
- Stage 2 training, `lapa train-vla` (import directly, they need Lightning): `pretrain` (the loop),
  `pretrain_config` (its config), `optim` (AdamW groups), `validation` (metrics and the floor),
  `distributed` (meta-device build, sharding, export of a sharded model).

Never imports `lapa.laq`: latent tokens reach Stage 2 only through shards.
"""

from lapa.vla.backbones import (
    BACKBONES,
    BackboneConfig,
    FusedBackbone,
    FusedBackboneConfig,
    VisionBackbone,
    get_backbone,
    to_unit_pixels,
)
from lapa.vla.export import read_info
from lapa.vla.heads import HEADS, HeadConfig, TokenClassifierHead, get_head
from lapa.vla.language_model import LanguageModelConfig, load_language_model
from lapa.vla.model import VLA, VLAConfig, load_vla_config
from lapa.vla.projector import Projector, ProjectorConfig
from lapa.vla.prompt import PromptConfig, format_prompt, tokenize_prompts
from lapa.vla.tokenizer import BUILTIN, load_tokenizer

__all__ = ["BACKBONES", "BUILTIN", "HEADS", "VLA", "BackboneConfig", "FusedBackbone", "FusedBackboneConfig",
           "HeadConfig", "LanguageModelConfig", "Projector", "ProjectorConfig", "PromptConfig", "TokenClassifierHead",
           "VLAConfig", "VisionBackbone", "format_prompt", "get_backbone", "get_head", "load_language_model",
           "load_tokenizer", "load_vla_config", "read_info", "to_unit_pixels", "tokenize_prompts"]
