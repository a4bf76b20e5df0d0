"""The VLA's language model: any HF decoder-only LM, loaded WITHOUT its LM head (`AutoModel`: e.g.
`LlamaModel` out of a `LlamaForCausalLM` checkpoint) and driven through `inputs_embeds`.

By HF name or local directory (Llama-2 7B at full size, a ~1B LM on one GPU), or built from an HF
config dict with random init (tiny models for tests and debugging: `{"model_type": "llama", ...}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lapa.config import require
from lapa.vla.hf import apply_overrides

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class LanguageModelConfig:
    # HF hub name or local directory; None = build from `hf_config` with random init.
    name_or_path: str | None = "meta-llama/Llama-2-7b-hf"
    # With `name_or_path`: overrides of the checkpoint's config; without: the whole HF config, with its
    # "model_type" (vocab_size defaults to the tokenizer's size). Resolved to the full config dict.
    hf_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.name_or_path is not None or "model_type" in self.hf_config, "lm.hf_config", self.hf_config,
                "needs a model_type (e.g. llama) and the sizes when lm.name_or_path is null")


def load_language_model(cfg: LanguageModelConfig, attn_implementation: str = "sdpa", load_weights: bool = True,
                        vocab_size: int | None = None) -> tuple[PreTrainedModel, LanguageModelConfig]:
    """The LM body (`PreTrainedModel` returning `last_hidden_state`, no LM head) and its resolved config.

    `vocab_size` fills the embedding size of an LM built from config when its hf_config sets none.
    `load_weights=False` builds from `cfg.hf_config` alone (random init, e.g. before loading an export).
    """
    from transformers import AutoConfig, AutoModel

    if load_weights and cfg.name_or_path is not None:
        hf = apply_overrides(AutoConfig.from_pretrained(cfg.name_or_path), cfg.hf_config)
        # fp32 master weights (transformers 5 would otherwise keep the checkpoint's fp16/bf16); the
        # training strategy or `VLA.from_pretrained(dtype=...)` picks the compute dtype.
        model = AutoModel.from_pretrained(cfg.name_or_path, config=hf, attn_implementation=attn_implementation,
                                          dtype=torch.float32)
    else:
        d = dict(cfg.hf_config)
        if vocab_size is not None:
            d.setdefault("vocab_size", vocab_size)
        hf = AutoConfig.for_model(d.pop("model_type"), **d)
        model = AutoModel.from_config(hf, attn_implementation=attn_implementation)
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"lm={cfg.name_or_path!r}: an encoder-decoder model; the VLA needs a decoder-only LM")
    resolved = LanguageModelConfig(name_or_path=cfg.name_or_path, hf_config=model.config.to_dict())
    return model, resolved
