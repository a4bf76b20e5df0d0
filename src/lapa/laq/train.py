"""`lapa train-laq`: Stage 1 training of the latent action quantiser with the Lightning Trainer.

Writes into `output_dir`:
    config.yaml              the resolved config of the run (also stored inside every checkpoint)
    checkpoints/last.ckpt    the newest state (on every periodic save and at the end)
    checkpoints/best.ckpt    lowest val/loss_recon so far
    checkpoints/step_N.ckpt  periodic, the newest `training.checkpoint.keep_periodic` kept
    logs/                    CSV / TensorBoard / W&B logs (`logger=`)
    recon/step_N.png         frame t | frame t+1 | reconstruction, after every validation
    laq_final.pt             the final model in lapa's own format (`lapa label` reads it)
    summary.json             steps, wall time, best and final validation metrics

Resume (`resume=auto` or `resume=PATH`): restores the weights, the optimiser and lr-schedule state, the
global step, the epoch and batch counters and the best/periodic-checkpoint bookkeeping; the model's
noise (NSVQ) is seeded by the batch number, so it continues exactly as in an uninterrupted run. The
shard stream of `LAPADataModule` is seeded by (data.seed, epoch, rank, worker) and its position is
saved in every checkpoint, so a resumed run trains on the batches (and augmentations) the
uninterrupted run would have seen next (`lapa.data.stream`; with other data or loader settings the
stream restarts at the beginning of the saved epoch, with a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapa.config import require, to_dict, to_yaml
from lapa.data.datamodule import LAPADataModule
from lapa.data.frame_pairs import FRAME_PAIRS
from lapa.data.loader import DataConfig
from lapa.data.shards import require_shards
from lapa.laq import LAQConfig, save_model
from lapa.laq.callbacks import ReconstructionGrid
from lapa.laq.task import LAQTask, TrainingConfig
from lapa.training.cluster import ClusterConfig, apply_precision, make_strategy
from lapa.training.lightning_callbacks import (
    AtomicCheckpointIO,
    StepProgressBar,
    checkpoint_callbacks,
    checkpoint_step,
    fit_to_the_end,
    quiet_lightning,
    run_callbacks,
)
from lapa.training.loggers import WandbConfig, check_logger, make_logger
from lapa.training.loop_checks import check_run_options
from lapa.training.run_dir import RunDir

log = logging.getLogger(__name__)

# What a run writes into output_dir besides config.yaml, summary.json and checkpoints/ (`RunDir.start`).
RUN_OUTPUTS = ("laq_final.pt", "recon", "logs")


@dataclass
class TrainLAQConfig:
    """The config of `lapa train-laq` (conf/train_laq.yaml)."""

    model: LAQConfig = field(default_factory=LAQConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    experiment_name: str = "laq"  # names the run (logs; the default output_dir)
    seed: int = 42  # model init and the per-batch noise seeds
    output_dir: str = "runs/laq"  # checkpoints, logs, recon/, laq_final.pt, summary.json
    resume: str | None = None  # null: a fresh run | auto: output_dir/checkpoints/last.ckpt if present | PATH
    overwrite: bool = False  # true: delete the run already in output_dir and start over
    logger: str = "csv"  # csv | tensorboard | wandb
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        check_logger(self.logger)
        check_run_options(self.output_dir, self.resume)
        image_size = getattr(self.data, "image_size", None)
        require(image_size in (None, self.model.image_size), "data.image_size", image_size,
                f"must equal model.image_size={self.model.image_size} (the model's input size)")

    def check_inputs(self) -> None:
        """The training (and validation) shards exist (run by `lapa` before anything is created)."""
        require_shards("data.train_shards", self.data.train_shards)
        if self.data.val_shards:
            require_shards("data.val_shards", self.data.val_shards)


def build_trainer(cfg: TrainLAQConfig, callbacks: list, logger: Any) -> Any:
    """A Lightning Trainer from `training` (loop, clipping) and `cluster` (devices, precision)."""
    import lightning as L

    quiet_lightning()
    t, c = cfg.training, cfg.cluster
    step_interval = isinstance(t.val_check_interval, int)
    # The bar reads the logged tensors (a host-device sync on GPU) each time it refreshes: do that as
    # often as the loggers write, not on every step.
    callbacks = [*callbacks, StepProgressBar(refresh_rate=max(1, t.log_every_n_steps))]
    return L.Trainer(
        accelerator="gpu" if c.accelerator == "cuda" else c.accelerator,
        devices=c.devices, num_nodes=c.num_nodes, strategy=make_strategy(c),
        precision=c.resolved_precision(),
        max_steps=t.max_steps, max_epochs=t.max_epochs,
        val_check_interval=t.val_check_interval,
        # An int interval counts training batches across epochs (streaming data has no epochs).
        check_val_every_n_epoch=None if step_interval else 1,
        limit_val_batches=t.limit_val_batches, num_sanity_val_steps=1,
        log_every_n_steps=t.log_every_n_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        gradient_clip_algorithm=t.gradient_clip_algorithm if t.gradient_clip_val else None,
        callbacks=callbacks, logger=logger, default_root_dir=cfg.output_dir,
        plugins=[AtomicCheckpointIO()], enable_model_summary=True)


def _metric(trainer: Any, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def run(cfg: TrainLAQConfig, datamodule: Any = None) -> int:
    """Train the LAQ on frame-pair shards; `resume=auto` continues a stopped run in `output_dir`.

    Examples:
        lapa train-laq experiment=laq_debug data.train_shards='shards/train/*.tar' \\
            data.val_shards='shards/val/*.tar' output_dir=runs/laq_debug
        lapa train-laq experiment=laq_full resume=auto          # on the cluster (8 GPUs)
        lapa train-laq training=laq_reference                   # the published recipe

    `datamodule` (Python use only) replaces the shard datamodule built from `cfg.data`; it must yield
    `{"frames": float [B, 3, 2, H, W] in [0, 1]}` batches.
    """
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only

    out = Path(cfg.output_dir)
    run_dir = RunDir(out)
    # A folder holding a run is refused unless resume= or overwrite=true says what to do with it.
    ckpt_path = run_dir.start(cfg.resume, cfg.overwrite, outputs=RUN_OUTPUTS, rank_zero=rank_zero_only.rank == 0)
    if rank_zero_only.rank == 0:  # only rank 0 writes checkpoints; nothing is saving yet
        for path in run_dir.clean(checkpoint_step(ckpt_path) if ckpt_path else None):
            log.info("removed %s: newer than the resumed state, it will be written again", path.name)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    precision = apply_precision(cfg.cluster)

    config_dict, config_yaml = to_dict(cfg), to_yaml(cfg)
    task = LAQTask(cfg.model, cfg.training)
    if datamodule is None:
        datamodule = LAPADataModule(cfg.data, fmt=FRAME_PAIRS)
    ck = cfg.training.checkpoint
    ckpt_callbacks, best_cb = checkpoint_callbacks(run_dir.checkpoints, ck.every_n_steps, ck.keep_periodic,
                                                   ck.save_best, ck.monitor)
    grid = ReconstructionGrid(out / "recon", rows=cfg.training.num_vis_rows)
    common, run_start = run_callbacks(run_dir.last, config_dict, config_yaml, cfg.seed)
    callbacks = [*ckpt_callbacks, grid, *common]
    trainer = build_trainer(cfg, callbacks, make_logger(cfg.logger, out, cfg.experiment_name, cfg.wandb))

    if trainer.is_global_zero:
        run_dir.write_config(config_yaml)
        n_params = sum(p.numel() for p in task.model.parameters())
        print(f"lapa train-laq: {cfg.experiment_name}, {n_params / 1e6:.2f} M parameters, "
              f"precision {precision}, writing to {out.resolve()}")
        print(f"  resuming from {ckpt_path}" if ckpt_path else "  starting a fresh run")

    last_ckpt = run_dir.last

    def keep_final_if_best() -> None:  # the final weights may be the best: best.ckpt is never worse than them
        if best_cb is not None:
            _keep_final_if_best(trainer, best_cb, _metric(trainer, ck.monitor), run_dir.best)

    status, wall = fit_to_the_end(trainer, task, datamodule, ckpt_path, command="train-laq", last=last_ckpt,
                                  before_last_save=keep_final_if_best)
    if status is not None:
        return status
    steps = trainer.global_step - run_start.start_step
    if not trainer.is_global_zero:
        return 0

    save_model(task.model, out / "laq_final.pt")
    best_path = best_cb.best_model_path if best_cb is not None else ""
    summary = {
        "experiment_name": cfg.experiment_name, "steps": trainer.global_step, "steps_this_run": steps,
        "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 4) if wall > 0 else None,
        "best_val_loss_recon": None if best_cb is None or best_cb.best_model_score is None else float(
            best_cb.best_model_score),
        "best_checkpoint": best_path or None,
        "last_checkpoint": str(last_ckpt), "final_model": str(out / "laq_final.pt"),
        "final_val": {k: _metric(trainer, f"val/{k}") for k in
                      ("loss_recon", "psnr", "psnr_copy", "perplexity", "codebook_utilization")},
        "reconstructions": str(grid.last_path) if grid.last_path else None,
    }
    run_dir.write_summary(summary)
    _print_summary(summary)
    return 0


def _keep_final_if_best(trainer: Any, best_cb: Any, score: float | None, best_path: Path) -> None:
    """After the final validation (outside `fit`, so `ModelCheckpoint` does not see it): when the final
    weights score better than the best so far, or when no best is recorded yet (a resumed run that
    validated nowhere else), they become `best.ckpt`."""
    import torch

    if score is None:
        return
    best = best_cb.best_model_score
    if best is not None and float(best) <= score and Path(best_cb.best_model_path or "").is_file():
        return
    best_cb.best_model_score = torch.tensor(score)  # before the save: best.ckpt records its own score
    best_cb.best_model_path = best_cb.kth_best_model_path = str(best_path)
    best_cb.best_k_models = {str(best_path): best_cb.best_model_score}
    trainer.save_checkpoint(best_path, weights_only=False)


def _print_summary(s: dict) -> None:
    v = s["final_val"]
    print(f"lapa train-laq: done, {s['steps']} steps ({s['steps_this_run']} in this run) in "
          f"{s['wall_s']:.1f} s ({s['steps_per_s'] or 0:.2f} steps/s)")
    if v["psnr"] is not None:
        verdict = "beats" if v["psnr"] > (v["psnr_copy"] or 0) else "does NOT beat"
        print(f"  final val: loss_recon {v['loss_recon']:.5f}, psnr {v['psnr']:.2f} dB vs copy-frame "
              f"{v['psnr_copy']:.2f} dB ({verdict} the baseline), perplexity {v['perplexity']:.2f}, "
              f"codebook utilization {v['codebook_utilization']:.2f}")
    if s["best_val_loss_recon"] is not None:
        print(f"  best val/loss_recon {s['best_val_loss_recon']:.5f}: {s['best_checkpoint']}")
    print(f"  last checkpoint {s['last_checkpoint']}\n  final model {s['final_model']}")
