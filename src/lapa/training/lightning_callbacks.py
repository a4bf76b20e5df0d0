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
- `CheckpointOnSigterm`: on SIGTERM (Slurm's time limit or preemption) saves a resumable `last.ckpt`.
- `checkpoint_step`: the global step stored in a Lightning checkpoint file.
- `StepProgressBar`: one bar over the run's steps; `quiet_lightning()`: drops Lightning's advertising and
  messages that say nothing about the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lapa.io import atomic_path, replace_dir
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


def atomic_model_parallel_strategy(**kwargs: Any) -> Any:
    """Lightning's `ModelParallelStrategy` whose sharded (DCP) checkpoints are written atomically: every rank
    writes its shard into `.NAME.partial/` beside the target, then rank 0 puts the complete directory in
    place of the old one (`lapa.io.replace_dir`). Lightning's own overwrites the directory in place, so a
    run killed while saving `last.ckpt` would leave a checkpoint that cannot be resumed."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    class AtomicModelParallelStrategy(ModelParallelStrategy):
        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            final = Path(self.broadcast(str(filepath)))
            tmp = final.with_name(f".{final.name}.partial")
            if self.global_rank == 0 and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save
            self.barrier("atomic_checkpoint_start")
            super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier("atomic_checkpoint_written")
            if self.global_rank == 0:
                replace_dir(tmp, final)
            self.barrier("atomic_checkpoint_done")

    return AtomicModelParallelStrategy(**kwargs)


class RunStart(L.Callback):
    """Remembers the global step the fit started from (after a resume restored it): `start_step`."""

    def __init__(self) -> None:
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step


def run_callbacks(last: Path, config_dict: dict, config_yaml: str, seed: int) -> tuple[list[L.Callback], RunStart]:
    """What every Lightning stage adds beside its checkpoint callbacks: the SIGTERM checkpoint at `last`, the
    config in every checkpoint, per-batch seeds, the lr in the logs, and the step the fit started from."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    start = RunStart()
    return [CheckpointOnSigterm(last), ConfigInCheckpoint(config_dict, config_yaml), SeedPerBatch(seed),
            LearningRateMonitor(logging_interval="step"), start], start


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
        best = BestCheckpoint(dirpath=ckpt_dir, filename="best", auto_insert_metric_name=False,
                              monitor=monitor, mode=mode, save_top_k=1, save_last=every_n_steps == 0)
        callbacks.append(best)
    return callbacks, best


class BestCheckpoint(ModelCheckpoint):
    """`best.ckpt`: a `ModelCheckpoint` that, resumed from a state saved before its first score (a periodic
    checkpoint written just before a validation), takes the score recorded inside an existing `best.ckpt`
    instead of forgetting it (and overwriting a better model at the next validation)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        path = Path(self.dirpath or "") / f"{self.filename}{self.FILE_EXTENSION}"
        if self.best_model_score is not None or not path.is_file():
            return
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
        score = saved.get(self.state_key, {}).get("best_model_score")
        if score is not None:
            self.best_model_score = torch.as_tensor(score)
            self.best_model_path = self.kth_best_model_path = str(path)
            self.best_k_models = {str(path): self.best_model_score}


class CheckpointOnSigterm(L.Callback):
    """Saves the run's `last.ckpt` when the run is stopped by SIGTERM (Slurm's time limit, preemption).

    Lightning's signal connector turns SIGTERM into a `SIGTERMException` at the end of the batch being
    trained (all ranks agree) and calls `on_exception` before it propagates out of `fit`: the state saved
    here is a clean one between two steps, what `resume=auto` continues from. Other exceptions may strike
    mid-step, so they save nothing. (Lightning's `OnExceptionCheckpoint` saves on any exception, deletes
    the file at teardown, and turns every later `fit(ckpt_path=None)` into a resume from "last".)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.ckpt_path = str(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step stored in a Lightning checkpoint: a file (memory-mapped: the weights are not read) or
    the directory of a sharded one (ModelParallelStrategy; the step is in its `meta.pt`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "meta.pt"
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


class StepProgressBar(TQDMProgressBar):
    """One bar over the run's optimiser steps (`Steps (epoch 1): 120/800`) when `max_steps` bounds the run.

    Lightning's bar restarts every epoch with min(epoch length, remaining steps) as its total; a stream
    without a length then shows `Epoch 0: 10/800` for an epoch of 75 batches."""

    def _by_step(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._by_step(trainer):
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        bar.total, bar.n = trainer.max_steps, trainer.global_step
        bar.set_description(f"Steps (epoch {trainer.current_epoch})")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._by_step(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


# Lightning lines that say nothing about the run: advertising, a default it announces on every save, the
# not-empty checkpoint folder of every resume (`RunDir.start` refuses any other), a torch deprecation
# inside Lightning.
_NOISE = ("💡 Tip:", "`weights_only` was not set", "exists and is not empty")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in _NOISE)


def quiet_lightning() -> None:
    """Lightning's log lines once each, without its advertising and noise (`_NOISE`); idempotent.

    Lightning gives its loggers their own handler only when it is imported before the root logger has
    one; imported later (`lapa demo` runs the stages in one process after `lapa` set up logging), its
    lines reached both the `lightning` logger's handler and the root's: printed twice. Here each of its
    loggers gets exactly one handler and stops propagating, whatever the import order."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
        logger.propagate = False
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def fit_to_the_end(trainer: Any, task: Any, datamodule: Any, ckpt_path: str | None, *, command: str, last: Path,
                   has_val: bool | None = None,
                   before_last_save: Callable[[], None] | None = None) -> tuple[int | None, float]:
    """`trainer.fit`, then what every Lightning stage does at the end: a final validation of the final
    weights when the last step had none (`task.last_val_step`), `before_last_save()` (e.g. keep the final
    weights as best), and the final state saved as `last` (whatever the periodic schedule was; the path
    that the run's `CheckpointOnSigterm` saves to on a stop).

    Returns (status, seconds of `fit`): status None when training reached its end; 1 when Lightning was
    interrupted (Ctrl-C); `EXIT_STOPPED` when a SIGTERM stopped it (Lightning ends `fit` with a
    `SIGTERMException` at the end of the batch it was on, after `CheckpointOnSigterm` saved `last`).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lapa.training.stop_signal import EXIT_STOPPED

    start = time.perf_counter()
    wall = 0.0
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        wall = time.perf_counter() - start
        if trainer.interrupted:
            print(f"lapa {command}: interrupted at step {trainer.global_step}; continue with resume=auto")
            return 1, wall
        if has_val is None:  # the validation loader Lightning ran, if any
            has_val = bool(trainer.num_val_batches) and sum(trainer.num_val_batches) > 0
        if has_val and task.last_val_step != trainer.global_step:
            trainer.validate(task, datamodule=datamodule, verbose=False)  # final metrics of the final weights
        if before_last_save is not None:
            before_last_save()
        trainer.save_checkpoint(last, weights_only=False)
    except SIGTERMException:
        if trainer.is_global_zero:
            print(f"lapa {command}: stopped by SIGTERM at step {trainer.global_step}; saved {last}. "
                  "Continue with the same command and resume=auto", flush=True)
        return EXIT_STOPPED, wall
    return None, wall
