"""Output heads of the VLA: what the hidden states at the k ACT positions are read out as.

One head covers both stages (a plain-dict registry, `HEADS`, leaves room for others):
- Stage 2: 4 ACT tokens, each one latent action token of a codebook of 8:
  LayerNorm + Linear(d -> 8) shared across the 4 positions -> logits [B, 4, 8].
- Stage 3: 1 ACT token predicting all 7 action dimensions as 256-bin tokens:
  LayerNorm + Linear(d -> 7 x 256) -> logits [B, 7, 256] (x chunk length when action chunking is on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lapa.config import require


@dataclass
class HeadConfig:
    kind: str = "token_classifier"  # key of HEADS
    num_queries: int = 4  # k learned ACT query tokens read out in one forward pass
    outputs_per_query: int = 1  # tokens predicted from each ACT position (Stage 3: 7 action dims)
    num_classes: int = 8  # classes per predicted token: LAQ codebook size (Stage 2) / action bins (Stage 3)

    def __post_init__(self) -> None:
        require(self.kind in HEADS, "head.kind", self.kind, f"must be one of {sorted(HEADS)}")
        require(self.num_queries >= 1, "head.num_queries", self.num_queries, "must be >= 1")
        require(self.outputs_per_query >= 1, "head.outputs_per_query", self.outputs_per_query, "must be >= 1")
        require(self.num_classes >= 2, "head.num_classes", self.num_classes, "must be >= 2")

    @property
    def num_outputs(self) -> int:
        """Tokens predicted per sample (the labels' second dimension)."""
        return self.num_queries * self.outputs_per_query


class TokenClassifierHead(nn.Module):
    """LayerNorm + Linear, shared across the ACT positions; cross-entropy against integer labels."""

    def __init__(self, width: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.outputs_per_query * cfg.num_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """ACT hidden states [B, k, d] -> logits [B, k * outputs_per_query, num_classes]."""
        logits = self.proj(self.norm(hidden))  # [B, k, outputs_per_query * C]
        return logits.reshape(hidden.shape[0], self.cfg.num_outputs, self.cfg.num_classes)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits [B, M, C] against labels [B, M] (int in [0, C)); fp32 softmax."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
        return F.cross_entropy(logits.float().flatten(0, 1), labels.long().flatten())


HEADS: dict[str, type[TokenClassifierHead]] = {"token_classifier": TokenClassifierHead}


def get_head(cfg: HeadConfig, width: int) -> TokenClassifierHead:
    return HEADS[cfg.kind](width, cfg)
