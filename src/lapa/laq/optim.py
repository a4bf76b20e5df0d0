"""Optimiser and learning-rate schedule of LAQ training (spec 2.1.3 `training/laq_optimizer.yaml`).

Two recipes are configurable:
- the spec's default: AdamW (lr 1e-4, betas (0.9, 0.999), weight decay 0.01, eps 1e-8) with a linear
  warmup over 1000 steps followed by a cosine decay to `eta_min` 1e-6 at the last training step;
- the published reference (`training/laq_reference.yaml`): Adam, weight decay 0, betas (0.9, 0.99),
  constant lr 1e-4.

The schedule is stepped every optimiser step (not every epoch), so it means the same thing for the
map-style and the streaming (WebDataset) loaders, and its state is a single counter that Lightning saves
and restores with the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lapa.config import require

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "constant")


@dataclass
class OptimizerConfig:
    """`training.optimizer`: the Adam family optimiser."""

    name: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 penalty; the reference uses 0)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
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


@dataclass
class SchedulerConfig:
    """`training.scheduler`: linear warmup, then cosine decay (or a constant lr)."""

    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 1000
    eta_min: float = 1e-6  # the lr reached at the last step (cosine only)
    # Steps of the cosine; null = the run's number of optimiser steps (Trainer.estimated_stepping_batches).
    total_steps: int | None = None

    def __post_init__(self) -> None:
        require(self.name in SCHEDULES, "training.scheduler.name", self.name,
                f"must be one of {', '.join(SCHEDULES)}")
        require(self.warmup_steps >= 0, "training.scheduler.warmup_steps", self.warmup_steps,
                "must be >= 0")
        require(self.eta_min >= 0, "training.scheduler.eta_min", self.eta_min, "must be >= 0")
        require(self.total_steps is None or self.total_steps > self.warmup_steps,
                "training.scheduler.total_steps", self.total_steps,
                "must be null or larger than training.scheduler.warmup_steps")


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


def lr_factor(step: int, cfg: SchedulerConfig, total_steps: int, base_lr: float) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based).

    Warmup: (step + 1) / warmup_steps, so the first step already moves (a factor of 0 would waste it).
    Cosine: from 1 at the end of warmup to eta_min / base_lr at `total_steps`, flat after that.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    floor = cfg.eta_min / base_lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step; `total_steps` is the length of the run."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, total_steps, base_lr))
