"""Checks of the settings every training command shares, so that each stage's config validates them the
same way and names the key: the output folder and `resume`, and the loop (`training.*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lapa.config import require


def check_run_options(output_dir: str, resume: str | None, *, directories: bool = False,
                      checkpoint: str = "an existing checkpoint file") -> None:
    """`output_dir` is a path; `resume` is null, auto or an existing checkpoint (a file, or also a
    directory when `directories`: DCP checkpoints of sharded runs)."""
    require(bool(output_dir), "output_dir", output_dir, "must be a directory path")
    found = resume is not None and (Path(str(resume)).exists() if directories else Path(str(resume)).is_file())
    require(resume in (None, "auto") or found, "resume", resume, f"must be null, 'auto' or {checkpoint}")


def check_loop(training: Any, *, min_val_check_interval: int = 0) -> None:
    """The loop settings of a `training` config: max_steps, accumulate_grad_batches, gradient_clip_val,
    val_check_interval (>= `min_val_check_interval`), limit_val_batches and log_every_n_steps."""
    t = training
    require(t.max_steps >= 1, "training.max_steps", t.max_steps, "must be >= 1")
    require(t.accumulate_grad_batches >= 1, "training.accumulate_grad_batches", t.accumulate_grad_batches,
            "must be >= 1")
    require(t.gradient_clip_val >= 0, "training.gradient_clip_val", t.gradient_clip_val, "must be >= 0")
    require(t.val_check_interval >= min_val_check_interval, "training.val_check_interval", t.val_check_interval,
            f"must be >= {min_val_check_interval}")
    require(t.limit_val_batches is None or t.limit_val_batches >= 1, "training.limit_val_batches",
            t.limit_val_batches, "must be >= 1 or null")
    require(t.log_every_n_steps >= 1, "training.log_every_n_steps", t.log_every_n_steps, "must be >= 1")
