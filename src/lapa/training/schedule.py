"""The learning-rate schedule of the plain training loops (Stage 2's Fabric loop; reusable by any stage):
a linear warmup, then a cosine decay to `eta_min` (or a constant lr), stepped once per optimiser step.

Its only state is `LambdaLR`'s step counter, so a checkpoint restores it exactly. The Lightning stages
(`lapa.laq.optim`) use the same formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lapa.config import require

SCHEDULES = ("cosine", "constant")


@dataclass
class SchedulerConfig:
    """`training.scheduler`: linear warmup, then cosine decay (or a constant lr)."""

    name: str = "cosine"  # cosine | constant
    warmup_steps: int = 2000  # optimiser steps of the linear warmup from 0 to the peak lr
    eta_min: float = 1e-6  # the lr reached at the last step (cosine only)
    # Optimiser steps of the cosine; null = the run's `training.max_steps`. Set it to stop a run early
    # (max_steps smaller) on the schedule of a longer one.
    total_steps: int | None = None

    def __post_init__(self) -> None:
        require(self.name in SCHEDULES, "training.scheduler.name", self.name, f"must be one of {', '.join(SCHEDULES)}")
        require(self.warmup_steps >= 0, "training.scheduler.warmup_steps", self.warmup_steps, "must be >= 0")
        require(self.eta_min >= 0, "training.scheduler.eta_min", self.eta_min, "must be >= 0")
        require(self.total_steps is None or self.total_steps > self.warmup_steps, "training.scheduler.total_steps",
                self.total_steps, "must be null or larger than training.scheduler.warmup_steps")


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
    """A LambdaLR stepped once per optimiser step; `total_steps` is the length of the schedule."""
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps, base_lr))
