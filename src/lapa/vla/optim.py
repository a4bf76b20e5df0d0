"""The VLA's optimiser (Stages 2 and 3; spec 2.2.5 `training.optimizer`): AdamW, betas (0.9, 0.95),
weight decay 0.1 on the weight matrices only.

Parameter groups (`parameter_groups`), what is decayed and why:
- decayed: the weight matrices of Linear layers (LM attention and MLP, projector, head);
- not decayed: biases and norm gains (every parameter with fewer than 2 dimensions: decaying a norm's
  gain changes the scale of the activations rather than regularising), the ACT query embeddings
  (`act_queries` [k, d]: learned inputs, like position embeddings) and every embedding table
  (`nn.Embedding`: the LM's token embeddings). AdamW's decoupled decay shrinks every row of a table at
  every step, also the rows of words no robot prompt contains, which get no gradient; over a long run
  that erodes the pretrained vocabulary that Stage 3's instructions need.
- absent: the frozen vision tower (no gradient, so no optimiser state at all).

Built from the module after sharding (FSDP2 replaces parameters by DTensors; the groups are found by
module type and name, which sharding keeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lapa.config import require

NO_DECAY_NAMES = ("act_queries",)  # parameters of the VLA itself kept out of weight decay


@dataclass
class OptimizerConfig:
    """`training.optimizer`: AdamW with decoupled weight decay."""

    lr: float = 1e-5  # spec: conservative for LLM finetuning
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    eps: float = 1e-8
    # Fused kernels on CUDA, multi-tensor (foreach) on CPU; `false` forces the plain loop (debugging).
    fused: bool = True

    def __post_init__(self) -> None:
        require(self.lr > 0, "training.optimizer.lr", self.lr, "must be > 0")
        require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "training.optimizer.betas",
                list(self.betas), "must be two numbers in [0, 1)")
        require(self.weight_decay >= 0, "training.optimizer.weight_decay", self.weight_decay, "must be >= 0")
        require(self.eps > 0, "training.optimizer.eps", self.eps, "must be > 0")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed matrices, weight_decay}, {the rest, 0.0}] over the trainable parameters of `model`
    (see the module docstring for the split)."""
    exempt = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    exempt |= {id(p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in NO_DECAY_NAMES}
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2 and id(p) not in exempt]
    rest = [p for p in trained if p.ndim < 2 or id(p) in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over `model`'s trainable parameters, fused on CUDA and foreach elsewhere."""
    on_cuda = any(p.is_cuda for p in model.parameters() if p.requires_grad)
    kwargs: dict = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.fused and on_cuda:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = cfg.fused
    return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), **kwargs)
