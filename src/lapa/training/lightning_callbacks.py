"""Lightning Trainer pieces every Trainer stage shares (Stage 1 `train-laq`, Stage 3 fine-tuning).

- `SeedPerBatch`: seeds torch by (seed, batch number, rank), so a resumed run draws exactly the noise of
  an uninterrupted one.
- `ConfigInCheckpoint`: stores the resolved run config (dict and YAML text) in every checkpoint.
- `AtomicCheckpointIO`: writes each checkpoint to a temporary file in the same directory and renames
  it, so `last.ckpt` is never half-written. (Lightning's own save writes through an fsspec transaction
  whose temporary file lies in the system temp dir; the final move is a copy when that is another
  disk.)
- `checkpoint_callbacks`: the `ModelCheckpoint`s writing the run directory's `step_N.ckpt` (the newest
  K), `last.ckpt` and `best.ckpt` (`lapa.training.run_dir` names).
- `checkpoint_step`: the global step stored in a Lightning checkpoint file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lapa.io import atomic_path
from lapa.training.seeding import mix_seed


class SeedPerBatch(L.Callback):
    """Seeds torch's RNG with `mix_seed(seed, training batch number, rank)` before every training batch.

    The model's randomness (NSVQ noise substitution, dropout) then depends only on where the run is, so
    a resumed run draws exactly the noise the uninterrupted run would have drawn. Saving and restoring
    the RNG state instead is not enough: dataloader iterators, validation and sanity checks also draw
    from the global generator, at different points in a resumed and an uninterrupted run. The batch
    counter is Lightning's, saved in every checkpoint; ranks get distinct streams.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # this batch included
        torch.manual_seed(mix_seed(self.seed, batches, trainer.global_rank))


class ConfigInCheckpoint(L.Callback):
    """Puts the resolved run config (a dict and its YAML text) into every checkpoint, under the keys
    `lapa_config` and `lapa_config_yaml` (loaders rebuild the model from it, DESIGN.md section 6)."""

    def __init__(self, config: dict, config_yaml: str) -> None:
        self.config = config
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["lapa_config"] = self.config
        checkpoint["lapa_config_yaml"] = self.config_yaml


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, then an atomic rename onto it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def checkpoint_callbacks(ckpt_dir: str | os.PathLike, every_n_steps: int, keep_periodic: int,
                         save_best: bool, monitor: str,
                         mode: str = "min") -> tuple[list[ModelCheckpoint], ModelCheckpoint | None]:
    """Periodic (`step_N.ckpt` every `every_n_steps`, the newest `keep_periodic` kept, also writing
    `last.ckpt`; none when `every_n_steps` is 0) and best-by-`monitor` (`best.ckpt`) ModelCheckpoints.
    Returns (all of them, the best one or None)."""
    callbacks: list[ModelCheckpoint] = []
    if every_n_steps > 0:
        # monitor="step", mode="max": keep the newest `keep_periodic` periodic checkpoints.
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="step_{step:08d}", auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps, save_top_k=keep_periodic, monitor="step",
            mode="max", save_last=True,
            # A replayed step overwrites its file instead of adding `step_N-v1.ckpt` beside it.
            enable_version_counter=False,
            # Save on the step itself: "step" is never stale, so Lightning must not defer a save that
            # falls on an epoch's last batch to a validation that may not run at that step.
            save_on_train_epoch_end=True))
    best = None
    if save_best:
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", auto_insert_metric_name=False,
                               monitor=monitor, mode=mode, save_top_k=1, save_last=every_n_steps == 0)
        callbacks.append(best)
    return callbacks, best


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step stored in a Lightning checkpoint file (memory-mapped: the weights are not read)."""
    return int(torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)["global_step"])
