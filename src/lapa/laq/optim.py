"""Optimiser and learning-rate schedule of LAQ training (spec 2.1.3 `training/laq_optimizer.yaml`).

Two recipes are configurable:
- the spec's default: AdamW (lr 1e-4, betas (0.9, 0.999), weight decay 0.01, eps 1e-8) with a linear
  warmup over 1000 steps followed by a cosine decay to `eta_min` 1e-6 at the last training step;
- the published reference (`training/laq_reference.yaml`): Adam, weight decay 0, betas (0.9, 0.99),
  constant lr 1e-4.

The schedule (`lapa.training.schedule`, shared with every stage) is stepped every optimiser step (not
every epoch), so it means the same thing for the map-style and the streaming (WebDataset) loaders, and its
state is a single counter that Lightning saves and restores with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lapa.config import require

OPTIMIZERS = ("adamw", "adam")


@dataclass
class OptimizerConfig:
    """`training.optimizer`: the Adam family optimiser."""

    name: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 penalty; the reference uses 0)
    lr: float = 1e-4  # peak learning rate (after the warmup)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's moment decay rates
    weight_decay: float = 0.01  # AdamW: decoupled; adam: an L2 penalty
    eps: float = 1e-8  # Adam's denominator epsilon
    # Fused kernels on CUDA, multi-tensor (foreach) on CPU; `false` forces the plain loop (debugging).
    fused: bool = True

    def __post_init__(self) -> None:
        require(self.name in OPTIMIZERS, "training.optimizer.name", self.name,
                f"must be one of {', '.join(OPTIMIZERS)}")
        require(self.lr > 0, "training.optimizer.lr", self.lr, "must be > 0")
        require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                "training.optimizer.betas", list(self.betas), "must be two numbers in [0, 1)")
        require(self.weight_decay >= 0, "training.optimizer.weight_decay", self.weight_decay,
                "must be >= 0")
        require(self.eps > 0, "training.optimizer.eps", self.eps, "must be > 0")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and conv kernels (ndim >= 2); never biases, norm gains or scales (ndim < 2).

    Decaying LayerNorm gains and the attention's q/k scales would pull them towards zero, which changes
    the attention temperature rather than regularising; the usual split (nanoGPT) avoids that.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW/Adam over `model`'s trainable parameters, fused on CUDA and foreach elsewhere."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    kwargs: dict = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.fused and on_cuda:
        kwargs["fused"] = True
    elif cfg.fused:
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(parameter_groups(model, cfg.weight_decay), **kwargs)
