"""The Stage 3 model (spec 2.3.1, approach A): a Stage 2 export with its latent head replaced by an action
head read from ONE ACT token (`swap_head`, `build_finetune_model`), or the same architecture from scratch;
optional peft LoRA adapters on the LM (`apply_lora`), merged into plain weights for export (`merge_lora`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lapa.config import ConfigError
from lapa.vla.finetune_config import ACTION_DIM, FinetuneConfig, LoRAConfig, check_init
from lapa.vla.heads import HeadConfig, get_head
from lapa.vla.model import VLA

log = logging.getLogger(__name__)




# ---------------------------------------------------------------------------------------------- the model
def action_head_config(chunk: int = 1, num_bins: int = 256) -> HeadConfig:
    """One ACT token -> 7 x `chunk` action dimensions of `num_bins` bins each."""
    return HeadConfig(kind="token_classifier", num_queries=1, outputs_per_query=ACTION_DIM * chunk,
                      num_classes=num_bins)


def swap_head(model: VLA, chunk: int = 1, num_bins: int = 256, keep_query: int = 0) -> VLA:
    """Turn a Stage 2 VLA into a Stage 3 one in place (spec 2.3.1 approach A): keep ACT query row
    `keep_query` only, replace the head by a fresh LayerNorm + Linear(d -> 7 x chunk x num_bins); every
    other weight stays. Seed torch before for a reproducible head."""
    config = copy.deepcopy(model.config)
    config.stage, config.head = 3, action_head_config(chunk, num_bins)
    queries = model.act_queries.detach()
    if not 0 <= keep_query < queries.shape[0]:
        raise ValueError(f"keep_query={keep_query}: the model has {queries.shape[0]} ACT queries")
    model.act_queries = nn.Parameter(queries[keep_query:keep_query + 1].clone())
    model.head = get_head(config.head, queries.shape[1]).to(device=queries.device, dtype=queries.dtype)
    model.config = config
    return model


def build_finetune_model(cfg: FinetuneConfig) -> tuple[VLA, dict[str, Any]]:
    """The Stage 3 model of `cfg.init` and a description of where it came from (for info.json)."""
    torch.manual_seed(cfg.seed)
    if cfg.scratch:
        config = copy.deepcopy(cfg.model)
        config.stage, config.head = 3, action_head_config(cfg.action_chunk, cfg.num_bins)
        model = VLA(config)
        source: dict[str, Any] = {"init": "scratch"}
    else:
        info = check_init(cfg.init)
        model = VLA.from_pretrained(cfg.init, dtype=torch.float32)
        torch.manual_seed(cfg.seed)
        swap_head(model, cfg.action_chunk, cfg.num_bins)
        source = {"init": str(Path(cfg.init).resolve()), "init_training": info.get("training")}
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    return model.train(), source


def apply_lora(model: VLA, cfg: LoRAConfig) -> VLA:
    """peft LoRA adapters on the LM's `cfg.target_modules`, in place; every non-adapter LM weight frozen
    (the projector, ACT queries and head still train)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets: str | list[str] = "all-linear" if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
    try:
        model.lm = inject_adapter_in_model(peft_cfg, model.lm)
    except ValueError as err:
        raise ConfigError(f"lora.target_modules={list(cfg.target_modules)}: {err}") from None
    for name, param in model.lm.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def has_lora(model: VLA) -> bool:
    return any("lora_" in name for name, _ in model.lm.named_parameters())


def merge_lora(model: VLA) -> VLA:
    """Fold every LoRA adapter into its base weight and put the plain layer back, in place: the LM has
    its original structure and parameter names again (what `save_pretrained` / `from_pretrained` expect)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = model.lm.get_submodule(parent_name) if parent_name else model.lm
            setattr(parent, child, module.get_base_layer())
    return model


