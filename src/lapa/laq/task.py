"""`LAQTask`: the Lightning module of Stage 1 (spec 2.1.4): trains the LAQ on frame pairs.

The only loss is the model's reconstruction MSE of frame t+1 (`LAQOutput.loss`); NSVQ needs no codebook
or commitment losses. Besides the loss we log, per training step and per validation epoch:

- `perplexity`: exp(entropy) of the batch's code histogram (from the model; 1 = collapse, K = uniform);
- `codebook_utilization`: the fraction of the K codes chosen at least once (training: in the batch;
  validation: over the whole validation epoch, all ranks);
- `psnr`: 10 log10(1 / MSE) of the reconstruction clamped to [0, 1] against frame t+1, in pixel units
  [0, 1], computed from the MSE aggregated over the batch (training) or the epoch (validation). PSNR of
  the aggregated MSE (not a mean of per-pair PSNRs) stays finite when single pairs are static;
- `psnr_copy`: the same for the trivial prediction "frame t+1 = frame t". A model that does not beat it
  has learnt nothing about the change between the frames.

Checkpoints hold `state_dict` keys `model.*` and `hyper_parameters = {"model": LAQConfig dict,
"training": TrainingConfig dict}`, so `lapa.laq.load_model` and `LAQTask.load_from_checkpoint` rebuild
the model from the checkpoint alone (docs/contracts.md, "LAQ model").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from lapa.config import require, to_dict, to_schema
from lapa.laq import LAQ, LAQConfig
from lapa.laq.metrics import code_counts, psnr_from_mse, utilisation
from lapa.laq.optim import OptimizerConfig, build_optimizer
from lapa.training.schedule import SchedulerConfig, build_scheduler


@dataclass
class CheckpointConfig:
    """`training.checkpoint`: which checkpoints `lapa train-laq` keeps in `<output_dir>/checkpoints`."""

    every_n_steps: int = 1000  # periodic `step=N.ckpt`; 0 disables (last.ckpt is written on every save)
    keep_periodic: int = 3  # newest periodic checkpoints kept; -1 keeps all
    save_best: bool = True  # best.ckpt by `monitor` (lowest), whenever validation runs
    monitor: str = "val/loss_recon"  # the logged value that picks best.ckpt (lowest)

    def __post_init__(self) -> None:
        require(self.every_n_steps >= 0, "training.checkpoint.every_n_steps", self.every_n_steps,
                "must be >= 0 (0 disables periodic checkpoints)")
        require(self.keep_periodic == -1 or self.keep_periodic >= 1, "training.checkpoint.keep_periodic",
                self.keep_periodic, "must be -1 (keep all) or >= 1")


@dataclass
class TrainingConfig:
    """`training` (conf/training/*.yaml): optimiser, schedule and loop of LAQ training."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(warmup_steps=1000))
    gradient_clip_val: float = 1.0  # 0 disables clipping
    gradient_clip_algorithm: str = "norm"  # norm | value
    max_steps: int = 100_000  # optimiser steps; -1 = until max_epochs
    max_epochs: int = -1  # -1 = until max_steps
    val_check_interval: int | float = 1000  # int: every N training batches; float: fraction of an epoch
    limit_val_batches: int | float = 1.0  # int: batches per validation; float: fraction
    log_every_n_steps: int = 50  # steps between log rows (and progress-bar refreshes)
    accumulate_grad_batches: int = 1  # batches summed into one optimiser step
    compile: bool = False  # torch.compile each transformer layer in place (keeps `model.*` checkpoint keys)
    num_vis_rows: int = 8  # rows of the reconstruction grid saved every validation
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        require(self.gradient_clip_val >= 0, "training.gradient_clip_val", self.gradient_clip_val,
                "must be >= 0 (0 disables clipping)")
        require(self.gradient_clip_algorithm in {"norm", "value"}, "training.gradient_clip_algorithm",
                self.gradient_clip_algorithm, "must be norm or value")
        require(self.max_steps == -1 or self.max_steps >= 1, "training.max_steps", self.max_steps,
                "must be -1 or >= 1")
        require(self.max_epochs == -1 or self.max_epochs >= 1, "training.max_epochs", self.max_epochs,
                "must be -1 or >= 1")
        require(self.max_steps >= 1 or self.max_epochs >= 1, "training.max_steps", self.max_steps,
                "set training.max_steps or training.max_epochs (both are -1: the run would never end)")
        require(self.val_check_interval > 0, "training.val_check_interval", self.val_check_interval,
                "must be > 0")
        require(not isinstance(self.val_check_interval, float) or self.val_check_interval <= 1.0,
                "training.val_check_interval", self.val_check_interval,
                "a float is a fraction of an epoch and must be <= 1.0 (use an int for a step count)")
        require(self.limit_val_batches >= 0, "training.limit_val_batches", self.limit_val_batches,
                "must be >= 0")
        require(self.log_every_n_steps >= 1, "training.log_every_n_steps", self.log_every_n_steps,
                "must be >= 1")
        require(self.accumulate_grad_batches >= 1, "training.accumulate_grad_batches",
                self.accumulate_grad_batches, "must be >= 1")
        require(self.num_vis_rows >= 0, "training.num_vis_rows", self.num_vis_rows, "must be >= 0")


# Logged PSNR floors the MSE at 1e-10 (100 dB): a perfect batch must not put an infinity into the logs.
PSNR_MIN_MSE = 1e-10


class LAQTask(L.LightningModule):
    """Wraps `LAQ` for Lightning; batches are `{"frames": float [B, 3, 2, H, W] in [0, 1]}`."""

    def __init__(self, model: LAQConfig | dict, training: TrainingConfig | dict | None = None) -> None:
        super().__init__()
        model_cfg = model if isinstance(model, LAQConfig) else to_schema(model, LAQConfig)
        if training is None:
            training = TrainingConfig()
        training_cfg = training if isinstance(training, TrainingConfig) else to_schema(training,
                                                                                       TrainingConfig)
        # Plain dicts: the checkpoint stays loadable without our dataclasses (contract of load_model).
        self.save_hyperparameters({"model": to_dict(model_cfg), "training": to_dict(training_cfg)})
        self.model_cfg = model_cfg
        self.training_cfg = training_cfg
        self.model = LAQ(model_cfg)
        self._val_sums: dict[str, torch.Tensor] = {}  # validation-epoch accumulators
        self.last_val_step = -1  # global step of the newest (non-sanity) validation

    # -------------------------------------------------------------------------------------------
    # steps
    # -------------------------------------------------------------------------------------------
    def forward(self, frames: torch.Tensor):
        """frames [B, 3, 2, H, W] in [0, 1] -> `LAQOutput(loss, recon, indices, perplexity)`."""
        return self.model(frames)

    def _errors(self, frames: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed squared errors in pixel units of (clamped reconstruction, copy of frame t) vs t+1."""
        target = frames[:, :, 1].float()  # [B, 3, H, W]
        sq = (recon.detach().float().clamp(0.0, 1.0) - target).pow(2).sum()
        sq_copy = (frames[:, :, 0].float() - target).pow(2).sum()
        return sq, sq_copy

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        frames = batch["frames"]
        # The NSVQ counts optimiser steps: tell it whether this micro-batch ends one (Lightning steps
        # every `accumulate_grad_batches` batches and at the end of an epoch).
        every = self.trainer.accumulate_grad_batches
        ends = every == 1 or (batch_idx + 1) % every == 0 or bool(self.trainer.is_last_batch)
        self.model.vq.step_ends = ends
        out = self.model(frames)
        with torch.no_grad():
            sq, sq_copy = self._errors(frames, out.recon)
            numel = frames[:, :, 1].numel()
            usage = utilisation(code_counts(out.indices, self.model_cfg.codebook_size))  # no host sync
        bs = frames.shape[0]
        self.log("train/loss_recon", out.loss, prog_bar=True, batch_size=bs)
        self.log("train/perplexity", out.perplexity, batch_size=bs)
        self.log("train/codebook_utilization", usage, batch_size=bs)
        self.log("train/psnr", psnr_from_mse(sq / numel, min_mse=PSNR_MIN_MSE), prog_bar=True, batch_size=bs)
        self.log("train/psnr_copy", psnr_from_mse(sq_copy / numel, min_mse=PSNR_MIN_MSE), batch_size=bs)
        return out.loss

    def on_validation_epoch_start(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_sums = {"loss": zero.clone(), "pairs": zero.clone(), "sq": zero.clone(),
                          "sq_copy": zero.clone(), "numel": zero.clone(), "perplexity": zero.clone(),
                          "batches": zero.clone(),
                          "counts": torch.zeros(self.model_cfg.codebook_size, dtype=torch.float64,
                                                device=self.device)}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        out = self.model(frames)
        sq, sq_copy = self._errors(frames, out.recon)
        bs = frames.shape[0]
        s = self._val_sums
        s["loss"] += out.loss.detach().double() * bs
        s["pairs"] += bs
        s["sq"] += sq.double()
        s["sq_copy"] += sq_copy.double()
        s["numel"] += frames[:, :, 1].numel()
        s["perplexity"] += out.perplexity.detach().double()
        s["batches"] += 1
        s["counts"] += code_counts(out.indices, self.model_cfg.codebook_size).double()
        # Returned to callbacks (ReconstructionGrid uses batch 0); no copies are made.
        return {"loss": out.loss.detach(), "frames": frames, "recon": out.recon.detach()}

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        # Sum over ranks first, so every metric describes the whole validation set.
        s = {k: self.trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._val_sums.items()}
        if float(s["pairs"]) == 0:
            return
        metrics = {
            "val/loss_recon": s["loss"] / s["pairs"],
            "val/perplexity": s["perplexity"] / s["batches"],
            "val/codebook_utilization": utilisation(s["counts"]),
            "val/psnr": psnr_from_mse(s["sq"] / s["numel"], min_mse=PSNR_MIN_MSE),
            "val/psnr_copy": psnr_from_mse(s["sq_copy"] / s["numel"], min_mse=PSNR_MIN_MSE),
        }
        for key, value in metrics.items():
            self.log(key, value.float(), prog_bar=key in {"val/loss_recon", "val/psnr"}, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The latent actions: indices [B, code_seq_len] long, each in 0..codebook_size-1."""
        return self.model.quantize(batch["frames"])

    # -------------------------------------------------------------------------------------------
    # setup and optimisation
    # -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.training_cfg.compile:
            # Per layer and in place (nn.Module.compile): parameter names, hence checkpoint keys, stay
            # `model.*`; a whole-model compile of the paper size took over 3 minutes on an H100.
            self.model.compile_layers()

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip directly unless a gradient scaler (16-mixed) is active.

        Lightning's mixed-precision plugin refuses to clip for a fused optimiser even under bf16, where
        nothing is scaled; fp32 and bf16 gradients are true gradients, so clipping them here is exact.
        """
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)  # unscales first
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> dict:
        cfg = self.training_cfg
        optimizer_cfg = cfg.optimizer
        if self.trainer.precision == "16-mixed" and cfg.gradient_clip_val:
            # A fused optimiser unscales inside its step, after clipping would have run: use the
            # non-fused one (`fused: false` in `build_optimizer`).
            optimizer_cfg = dataclasses.replace(optimizer_cfg, fused=False)
        optimizer = build_optimizer(self.model, optimizer_cfg)
        total = cfg.scheduler.total_steps
        if total is None:
            total = self.trainer.estimated_stepping_batches
            if cfg.scheduler.name == "cosine" and not math.isfinite(total):
                raise ValueError(
                    "training.scheduler.total_steps: the length of the run is unknown (streaming data "
                    "without training.max_steps); set training.max_steps or training.scheduler.total_steps")
        total = int(total) if math.isfinite(total) else cfg.scheduler.warmup_steps + 1
        scheduler = build_scheduler(optimizer, cfg.scheduler, total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
