"""The VLA of Stages 2 and 3 (DESIGN.md section 8, spec 2.2.1): frozen vision backbones -> projector ->
decoder-only LM -> head, with k learned ACT query tokens read out in ONE forward pass.

Sequence per sample (right-padded to the batch's longest prompt):

    [BOS] [IMG x N] [prompt tokens] [ACT x k] [PAD ...]        N = patches (256 at 224 px / 14)

The LM (no LM head) reads it through `inputs_embeds`; the hidden states of each sample's k ACT positions
go through the head: Stage 2 -> logits [B, 4, 8] over the LAQ codebook. Padding changes no sample's
output, and needs no attention mask: the LM is causal and every pad comes after every real token, so no
real token can see a pad, and a sample's real tokens sit at positions 0..n-1 as they would alone
(tests/vla/test_vla_model.py checks it). Without a mask the LM takes its plain causal attention path (SDPA's
`is_causal` kernel), which builds no [B, 1, T, T] mask: cheaper than masking pads on the left.

This file knows nothing of distribution (torchtitan style): sharding, mixed precision, activation
checkpointing and compile are applied from outside by `parallelize.py`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from lapa.config import ConfigError, require
from lapa.vla.backbones import FusedBackbone, FusedBackboneConfig
from lapa.vla.export import ExportMixin
from lapa.vla.heads import HeadConfig, get_head
from lapa.vla.language_model import LanguageModelConfig, load_language_model
from lapa.vla.projector import Projector, ProjectorConfig
from lapa.vla.prompt import PromptConfig, tokenize_prompts
from lapa.vla.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class VLAConfig:
    """The whole model. Defaults are the spec's 7B model (conf/vla_model/vla_7b.yaml); presets set all."""

    stage: int = 2  # 2: latent actions (LAQ codebook), 3: robot actions (binned)
    vision: FusedBackboneConfig = field(default_factory=FusedBackboneConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    # HF name / directory, "builtin" (the small tokenizer shipped with lapa), or None = the LM's own.
    tokenizer: str | None = None
    prompt: PromptConfig = field(default_factory=PromptConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    attn_implementation: str = "sdpa"  # of the LM and the backbones; flash_attention_2 on GPUs that have it

    def __post_init__(self) -> None:
        require(self.stage in (2, 3), "stage", self.stage, "must be 2 (latent actions) or 3 (robot actions)")
        require(self.tokenizer is not None or self.lm.name_or_path is not None, "tokenizer", self.tokenizer,
                "needs a tokenizer (e.g. builtin) when the LM is built from config (lm.name_or_path is null)")
        require(self.attn_implementation in ATTENTION, "attn_implementation", self.attn_implementation,
                f"must be one of {ATTENTION}")


def load_vla_config(preset: str, overrides: list[str] | None = None) -> VLAConfig:
    """A preset of conf/vla_model (vla_debug, vla_1b, vla_7b), validated; `overrides` are dotted
    `key=value` strings relative to the model config (`lm.hf_config.hidden_size=64`)."""
    from omegaconf import OmegaConf

    from lapa.config import compose, to_schema

    cfg = OmegaConf.to_container(compose(f"vla_model/{preset}").vla_model)  # a group: nested under its name
    # merged on plain containers, so that to_schema reports an unknown key as a ConfigError naming it
    return to_schema(OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or []))), VLAConfig)


class VLA(ExportMixin, nn.Module):
    """images + instructions -> logits [B, k * outputs_per_query, num_classes]."""

    config_class = VLAConfig

    def __init__(self, config: VLAConfig, tokenizer: PreTrainedTokenizerBase | None = None,
                 load_weights: bool = True) -> None:
        """`load_weights=False` builds every part from the HF config dicts in `config` (random init):
        what `from_pretrained` does before loading the exported weights, offline."""
        super().__init__()
        attn = config.attn_implementation
        self.tokenizer = tokenizer or load_tokenizer(config.tokenizer or config.lm.name_or_path)
        self.vision = FusedBackbone(config.vision, attn, load_weights)  # frozen
        self.lm, lm_cfg = load_language_model(config.lm, attn, load_weights, vocab_size=len(self.tokenizer))
        width = self.lm.config.hidden_size  # d
        vocab = self.lm.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab:
            raise ConfigError(f"tokenizer={config.tokenizer!r}: {len(self.tokenizer)} tokens but the LM embeds "
                              f"only {vocab}; use the LM's own tokenizer or a larger lm.hf_config.vocab_size")
        self.projector = Projector(self.vision.feature_dim, width, config.projector)
        # k learned ACT queries [k, d], at the scale of the LM's own initialisation.
        std = getattr(self.lm.config, "initializer_range", 0.02)
        self.act_queries = nn.Parameter(torch.randn(config.head.num_queries, width) * std)
        self.head = get_head(config.head, width)
        self.bos_token_id: int | None = self.tokenizer.bos_token_id  # None: the LM takes no BOS (e.g. Qwen)
        # The resolved config: every HF config dict, image size and normalisation filled in.
        self.config = copy.deepcopy(config)
        self.config.vision, self.config.lm = self.vision.config, lm_cfg

    # ---------------------------------------------------------------------------------- sizes
    @property
    def num_vision_tokens(self) -> int:
        """Image tokens per sample in the LM's sequence (N)."""
        return self.vision.num_patches

    def sequence_length(self, prompt_tokens: int) -> int:
        """LM sequence length for a prompt of `prompt_tokens` tokens: [BOS] + N + prompt + k."""
        bos = int(self.bos_token_id is not None)
        return bos + self.num_vision_tokens + prompt_tokens + self.config.head.num_queries

    def parameter_counts(self) -> dict[str, int]:
        """{"trained", "frozen", "total", "vision", "lm"}: numbers of parameters (for MFU and logs)."""
        trained = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trained": trained, "frozen": frozen, "total": trained + frozen,
                "vision": self.vision.num_parameters(), "lm": sum(p.numel() for p in self.lm.parameters())}

    # ---------------------------------------------------------------------------------- text
    def tokenize(self, instructions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Instructions -> {"input_ids", "attention_mask"} [B, L] with this model's prompt template."""
        return tokenize_prompts(self.tokenizer, instructions, self.config.prompt)

    # ---------------------------------------------------------------------------------- forward
    def embed(self, images: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM's input: embeddings [B, T, d] of the right-padded sequence [BOS] [IMG x N] [prompt]
        [ACT x k] [PAD...] and each sample's count of real tokens n [B] (its ACT tokens are at n-k..n-1)."""
        B = input_ids.shape[0]
        embed_tokens = self.lm.get_input_embeddings()
        txt = embed_tokens(input_ids)  # [B, L, d]; pad positions are moved behind the ACT tokens below
        dtype = txt.dtype  # the LM's compute dtype (also under a mixed-precision sharding policy)
        img = self.projector(self.vision(images).to(self.projector.net[0].weight.dtype))  # [B, N, d]
        act = self.act_queries.to(dtype).unsqueeze(0).expand(B, -1, -1)  # [B, k, d]
        parts = [img.to(dtype), txt, act]
        ones = attention_mask.new_ones
        masks = [ones(B, img.shape[1]), attention_mask, ones(B, act.shape[1])]
        if self.bos_token_id is not None:
            parts.insert(0, embed_tokens(input_ids.new_full((B, 1), self.bos_token_id)))  # [B, 1, d]
            masks.insert(0, ones(B, 1))
        x = torch.cat(parts, dim=1)  # [B, T, d], T = 1 + N + L + k
        mask = torch.cat(masks, dim=1).long()  # [B, T]
        # Right-align the pads: every real token in front of every pad, each group in its order, whatever
        # side the tokenizer padded. The keys are unique, so a plain argsort gives that order (a stable
        # sort would too, but has no ONNX export).
        T = mask.shape[1]
        key = (1 - mask) * T + torch.arange(T, device=mask.device)  # [B, T]
        order = key.argsort(dim=1)  # [B, T]
        x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))  # [B, T, d]
        return x, mask.sum(1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """images uint8 [B, H, W, 3] / [B, 3, H, W] or float [B, 3, H, W] in [0, 1]; input_ids and
        attention_mask [B, L] (see `tokenize`) -> logits [B, k * outputs_per_query, num_classes]."""
        x, lengths = self.embed(images, input_ids, attention_mask)
        # No attention mask: causal attention alone keeps pads (all behind the real tokens) out of sight.
        # No position ids either: the LM's default 0..T-1 are right, real tokens being at 0..n-1 (given
        # position ids, HF looks for packed sequences and builds a mask instead of using is_causal).
        out = self.lm(inputs_embeds=x, use_cache=False)
        k = self.config.head.num_queries
        index = lengths.unsqueeze(1) - k + torch.arange(k, device=x.device)  # [B, k]: each sample's ACT slots
        act = torch.gather(out.last_hidden_state, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, k, d]
        return self.head(act)  # Stage 2: [B, 4, 8]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits [B, M, C] against labels [B, M] (Stage 2: latent tokens [B, 4] in 0..7)."""
        return self.head.loss(logits, labels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, instructions: Sequence[str]) -> torch.Tensor:
        """Most likely tokens [B, M] (Stage 2: latent actions [B, 4]) for images and instructions."""
        enc = {k: v.to(self.act_queries.device) for k, v in self.tokenize(instructions).items()}
        return self(images, enc["input_ids"], enc["attention_mask"]).argmax(-1)
