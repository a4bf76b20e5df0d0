"""Experiment loggers of every stage: CSV and TensorBoard need no account (the defaults, DESIGN.md
section 3), W&B by config.

`make_logger(kind, output_dir, name, wandb_cfg)` builds one for the Lightning Trainer
(`lightning.pytorch.loggers`); with `fabric=True` one for Lightning Fabric (`lightning.fabric.loggers`
CSV/TensorBoard, W&B's own Fabric logger `wandb.integration.lightning.fabric.WandbLogger`), used as
`Fabric(loggers=...)` and fed by `fabric.log_dict(metrics, step)`. Either way CSV and TensorBoard
write to `<output_dir>/logs/version_N/`, a new N per (re)start: a resumed run never overwrites the
metrics of the run it continues. W&B writes under `<output_dir>/logs/`.

`check_logger(kind)` is for config validation (`__post_init__`): an unknown kind or a missing package
fails at start, naming the key and the value, never at the first log call hours later.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapa.config import require

LOGGERS = ("csv", "tensorboard", "wandb")
LOG_DIR = "logs"


@dataclass
class WandbConfig:
    """`wandb`: used when `logger=wandb` (needs the `wandb` extra)."""

    project: str = "lapa"  # W&B project
    entity: str | None = None  # W&B team or user; null: your default
    offline: bool = False  # true: log to disk only, `wandb sync` later (no account or network needed)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_logger(kind: str, key: str = "logger") -> None:
    """Raise `ConfigError` ("<key>=<kind>: ...") unless `kind` is one of `LOGGERS` and its package is
    installed."""
    require(kind in LOGGERS, key, kind, f"must be one of {', '.join(LOGGERS)}")
    if kind == "tensorboard":
        require(_has_module("tensorboard") or _has_module("tensorboardX"), key, kind,
                "needs the tensorboard package (pip install tensorboard)")
    if kind == "wandb":
        require(_has_module("wandb"), key, kind, "needs the wandb package (pip install 'lapa[wandb]')")


def make_logger(kind: str, output_dir: str | os.PathLike, name: str,
                wandb_cfg: WandbConfig | None = None, *, fabric: bool = False) -> Any:
    """A `kind` logger (csv | tensorboard | wandb) writing under `<output_dir>/logs`.

    `name` is the run's display name (W&B); `fabric=True` gives the Fabric flavour. Raises
    `ConfigError` for an unknown kind or a missing package.
    """
    check_logger(kind)
    out = Path(output_dir)
    if kind == "wandb":
        w = wandb_cfg or WandbConfig()
        if fabric:
            from wandb.integration.lightning.fabric import WandbLogger
        else:
            from lightning.pytorch.loggers import WandbLogger
        return WandbLogger(project=w.project, entity=w.entity, name=name, save_dir=str(out / LOG_DIR),
                           offline=w.offline)
    if fabric:
        from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

        cls = TensorBoardLogger if kind == "tensorboard" else CSVLogger
        return cls(root_dir=str(out), name=LOG_DIR)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cls = TensorBoardLogger if kind == "tensorboard" else CSVLogger
    return cls(save_dir=str(out), name=LOG_DIR)
