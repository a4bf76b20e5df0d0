"""The vision-language projector (spec 2.2.1): fused patch features -> the LM's embedding space.

LayerNorm -> Linear -> GELU -> Linear -> LayerNorm. The input LayerNorm puts the two backbones'
features (different scales) on a common footing; the output LayerNorm keeps visual tokens at a scale
the LM's input layer expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lapa.config import require


@dataclass
class ProjectorConfig:
    hidden_dim: int | None = None  # width of the hidden layer; None = the LM's width (spec: 2176 -> 4096 -> 4096)

    def __post_init__(self) -> None:
        require(self.hidden_dim is None or self.hidden_dim > 0, "projector.hidden_dim", self.hidden_dim, "must be > 0")


class Projector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, cfg: ProjectorConfig | None = None) -> None:
        super().__init__()
        hidden = (cfg or ProjectorConfig()).hidden_dim or out_dim
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, in_dim] -> [B, N, out_dim]."""
        return self.net(features)
