"""`lapa train-vla`: Stage 2, the VLA learns to predict latent actions (spec 2.2.4, the FoundationTrainer),
in a plain loop on Lightning Fabric.

Writes into `output_dir`:
    config.yaml                 the resolved config of the run (also inside every checkpoint)
    checkpoints/step_N[.ckpt]   periodic; the newest `training.checkpoint.keep` kept
    checkpoints/last[.ckpt]     -> the newest checkpoint (what resume=auto continues from)
    checkpoints/best[.ckpt]     -> the checkpoint of the lowest validation loss
    logs/                       CSV (default) / TensorBoard / W&B: train/*, val/* and val_floor/*
    export/                     the final model: `VLA.from_pretrained(output_dir/"export")`
    summary.json                steps, speed, final validation next to the floor, paths

A checkpoint is a directory (PyTorch Distributed Checkpoint, each rank writes its shards) when the model
is sharded over several devices, else one `.ckpt` file; `last` and `best` are symbolic links.

One optimiser step = `accumulate` micro-batches of `data.batch_size` per device (gradients synchronised
only on the last one, `fabric.no_backward_sync`, unless `training.parallel.sync_every_microbatch`), then
gradient clipping, AdamW and the lr schedule.
Before each step torch is seeded by `mix_seed(seed, step, rank)`: any randomness in the model depends only
on where the run is. Resume (`resume=auto`) restores the weights, the optimiser, the schedule, the step,
the data stream's position (the next batch is the one the uninterrupted run would have taken), the
label counts of the floor and the checkpoint bookkeeping: a resumed run continues the uninterrupted one
exactly.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lapa.config import ConfigError, to_dict, to_yaml
from lapa.data.formats import ShardFormat
from lapa.data.loader import eval_loader, train_loader
from lapa.data.skips import skipped_samples
from lapa.training.fabric import DCP_SUFFIX, all_reduce_, checkpoint_suffix, make_fabric, world_size
from lapa.training.loggers import make_logger
from lapa.training.run_dir import RunDir, step_of
from lapa.training.schedule import build_scheduler
from lapa.training.seeding import mix_seed
from lapa.training.stop_signal import EXIT_STOPPED, StopSignal
from lapa.vla.distributed import VLAParallelize, build_vla, export_vla
from lapa.vla.optim import build_optimizer
from lapa.vla.pretrain_config import TrainVLAConfig, check_data
from lapa.vla.validation import LabelCounts, validate

log = logging.getLogger(__name__)

# What a run writes into output_dir besides config.yaml, summary.json and checkpoints/ (`RunDir.start`).
RUN_OUTPUTS = ("export", "logs")

__all__ = ["FoundationTrainer", "TrainVLAConfig", "read_progress", "run"]


def run(cfg: TrainVLAConfig) -> int:
    """Train the VLA on latent-labelled shards; `resume=auto` continues a stopped run in `output_dir`.

    Examples:
        lapa train-vla experiment=vla_debug data.train_shards=runs/latent/train data.val_shards=runs/latent/val
        lapa train-vla experiment=vla_1b data.train_shards=... resume=auto        # one GPU
        sbatch --nodes=4 slurm/train.sbatch train-vla experiment=vla_7b          # 4 nodes x 4 H100
    """
    try:
        fmt = check_data(cfg)
        accumulate = cfg.training.accumulation(cfg.data.batch_size, world_size(cfg.cluster))
    except ConfigError as err:
        print(f"lapa train-vla: invalid config: {err}", file=sys.stderr)
        return 2
    parallelize = VLAParallelize(cfg.training.parallel)
    logger = make_logger(cfg.logger, cfg.output_dir, cfg.experiment_name, cfg.wandb, fabric=True)
    fabric = make_fabric(cfg.cluster, parallelize_fn=parallelize, loggers=[logger])
    fabric.launch()
    try:
        return FoundationTrainer(cfg, fabric, parallelize, fmt, accumulate).fit()
    except ConfigError as err:  # found after launch: a resume checkpoint of the wrong kind
        if fabric.is_global_zero:
            print(f"lapa train-vla: invalid config: {err}", file=sys.stderr)
        return 2


def read_progress(path: str | Path) -> dict[str, Any]:
    """The `progress` entry (step, schedule, data position, ...) of a train-vla checkpoint, file or
    DCP directory, without reading the weights."""
    path = Path(path)
    if path.is_dir():
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)["progress"]
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["progress"]


class FoundationTrainer:
    """The loop of `lapa train-vla` on a launched Fabric (see the module docstring)."""

    def __init__(self, cfg: TrainVLAConfig, fabric: Any, parallelize: VLAParallelize, fmt: ShardFormat,
                 accumulate: int) -> None:
        self.cfg, self.fabric, self.parallelize, self.fmt, self.accumulate = cfg, fabric, parallelize, fmt, accumulate
        self.rank0 = fabric.is_global_zero
        self.out = Path(cfg.output_dir)
        self.run_dir = RunDir(self.out, suffix=checkpoint_suffix(fabric))
        self.effective_batch = cfg.data.batch_size * fabric.world_size * accumulate
        self.step = 0
        self.last_saved: int | None = None
        self.last_val_step: int | None = None
        self.last_val: dict[str, dict[str, float]] = {"model": {}, "floor": {}}

    # ------------------------------------------------------------------------------------------ setup
    def _resume_path(self) -> str | None:
        """The checkpoint to continue from. A checkpoint of the other kind (a DCP directory of a sharded
        run, a file of a one-device run) is refused: their optimiser states are laid out differently."""
        # A folder holding a run is refused unless resume= or overwrite=true says what to do with it.
        path = self.run_dir.start(self.cfg.resume, self.cfg.overwrite, outputs=RUN_OUTPUTS, rank_zero=self.rank0)
        if path is None and self.cfg.resume == "auto":
            other = ".ckpt" if self.run_dir.suffix == DCP_SUFFIX else DCP_SUFFIX
            path = str(self.run_dir.checkpoints / f"last{other}")
            if not Path(path).exists():
                return None
        if path is not None and Path(path).is_dir() != (self.run_dir.suffix == DCP_SUFFIX):
            kind, run = ("a sharded (DCP) checkpoint", "on several devices") if Path(path).is_dir() else \
                ("a one-device checkpoint file", "on one device")
            raise ConfigError(f"resume={self.cfg.resume!r}: {path} is {kind}; continue it {run} (cluster.devices, "
                              f"cluster.num_nodes) or start a new output_dir")
        return path

    def _setup(self) -> str | None:
        cfg, fabric = self.cfg, self.fabric
        ckpt = self._resume_path()
        if self.rank0:
            resume_step = None if ckpt is None else step_of(ckpt)
            if ckpt is not None and resume_step is None:
                resume_step = int(read_progress(ckpt)["step"])
            for path in self.run_dir.clean(resume_step):
                log.info("removed %s: newer than the resumed state, it will be written again", path.name)
            self.run_dir.write_config(to_yaml(cfg))
        fabric.barrier()
        model = build_vla(cfg.model, fabric, cfg.training.init, cfg.training.parallel, self.parallelize, cfg.seed)
        self.model = fabric.setup_module(model)
        self.raw = self.model.module  # the VLA (sharded in place under FSDP2)
        optimizer = build_optimizer(self.raw, cfg.training.optimizer)  # after sharding: over the DTensors
        t = cfg.training
        self.scheduler = build_scheduler(optimizer, t.scheduler, t.scheduler.total_steps or t.max_steps)
        self.optimizer = fabric.setup_optimizers(optimizer)
        rank, world = fabric.global_rank, fabric.world_size
        self.train = train_loader(cfg.data, self.fmt, rank=rank, world=world)
        self.val = eval_loader(cfg.data, self.fmt, rank=rank, world=world) if cfg.data.val_shards else None
        head = self.raw.config.head
        self.counts = LabelCounts(head.num_outputs, head.num_classes, fabric.device)
        self.rotation = self.run_dir.rotation(t.checkpoint.keep, mode="min")
        if ckpt is not None:
            self._load(ckpt)
        return ckpt

    # ------------------------------------------------------------------------------------------ state
    def _progress(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.step * self.effective_batch,
                "scheduler": self.scheduler.state_dict(), "data": self.train.state_dict(),
                "rotation": self.rotation.state_dict(), "label_counts": self.counts.state_dict(),
                "config": to_dict(self.cfg), "model_config": to_dict(self.raw.config)}

    def _save(self) -> None:
        """Checkpoint this step (collective), then point `last` (and `best`) at it and rotate (rank 0)."""
        self.counts.sync()
        path = self.rotation.path(self.step)
        self.fabric.save(path, {"model": self.model, "optimizer": self.optimizer, "progress": self._progress()})
        self.fabric.barrier()
        if self.rank0:
            self.rotation.commit(self.step)
        self.last_saved = self.step

    def _load(self, path: str) -> None:
        state: dict[str, Any] = {"model": self.model, "optimizer": self.optimizer, "progress": {}}
        self.fabric.load(path, state)
        p = state["progress"]
        self.step = int(p["step"])
        self.scheduler.load_state_dict(p["scheduler"])
        self.train.load_state_dict(p["data"])
        self.rotation.load_state_dict(p["rotation"])
        self.counts.load_state_dict(p["label_counts"])
        self.last_saved = self.step

    # ------------------------------------------------------------------------------------------ steps
    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A loader batch -> images [B, 3, H, W], input_ids and attention_mask [B, L], labels [B, k] on the device."""
        device = self.fabric.device
        enc = self.raw.tokenize(batch["text"])
        return (batch["image"].to(device, non_blocking=True), enc["input_ids"].to(device),
                enc["attention_mask"].to(device), batch["latent_tokens"].to(device))

    def _batches(self) -> Iterator[dict]:
        """Training batches across epochs (each `iter` of the loader is the next epoch)."""
        empty = 0
        while True:
            n = 0
            for n, batch in enumerate(self.train, start=1):  # noqa: B007 - n counts the epoch's batches
                yield batch
            empty = empty + 1 if n == 0 else 0
            if empty >= 2:  # one empty epoch is a resume right at an epoch's end
                raise RuntimeError(f"data.train_shards={self.cfg.data.train_shards!r}: no training batch in an "
                                   f"epoch (fewer than data.batch_size={self.cfg.data.batch_size} valid samples "
                                   f"per rank? skipped: {skipped_samples()})")

    def _train_step(self, batches: Iterator[dict]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimiser step over `accumulate` micro-batches; (mean loss, gradient norm) as device tensors."""
        fabric, clip = self.fabric, self.cfg.training.gradient_clip_val
        torch.manual_seed(mix_seed(self.cfg.seed, self.step, fabric.global_rank))
        total = torch.zeros((), device=fabric.device)
        for micro in range(self.accumulate):
            images, input_ids, mask, labels = self._inputs(next(batches))
            self.counts.update(labels)
            skip_sync = micro < self.accumulate - 1 and not self.cfg.training.parallel.sync_every_microbatch
            with fabric.no_backward_sync(self.model, enabled=skip_sync):
                loss = self.raw.loss(self.model(images, input_ids, mask), labels)
                fabric.backward(loss / self.accumulate)
            total += loss.detach()
        norm = fabric.clip_gradients(self.model, self.optimizer, max_norm=clip) if clip > 0 else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total / self.accumulate, norm

    def _forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images, input_ids, mask, labels = self._inputs(batch)
        return self.model(images, input_ids, mask), labels

    def _dummy(self) -> dict:
        """A one-sample batch for a rank out of validation data (its result is dropped)."""
        size, k = self.cfg.data.image_size, self.raw.config.head.num_outputs
        return {"image": torch.zeros(1, 3, size, size), "text": [""],
                "latent_tokens": torch.zeros(1, k, dtype=torch.long)}

    def _validate(self) -> dict[str, dict[str, float]] | None:
        if self.val is None:
            return None
        self.counts.sync()
        self.model.eval()
        metrics = validate(self._forward, self.val, self.counts, dummy=self._dummy,
                           limit=self.cfg.training.limit_val_batches, world=self.fabric.world_size,
                           device=self.fabric.device)
        self.model.train()
        self.last_val, self.last_val_step = metrics, self.step
        logged = {f"val/{k}": v for k, v in metrics["model"].items()}
        logged.update({f"val_floor/{k}": v for k, v in metrics["floor"].items()})
        self.fabric.log_dict(logged, step=self.step)
        return metrics

    # ------------------------------------------------------------------------------------------ loop
    def fit(self) -> int:
        t = self.cfg.training
        ckpt = self._setup()
        start_step = self.step
        if self.rank0:
            self._print_start(ckpt)
        from tqdm.auto import tqdm

        bar = tqdm(total=t.max_steps, initial=self.step, desc="train-vla", unit="step", disable=not self.rank0,
                   dynamic_ncols=True)
        batches = self._batches()
        start = time.perf_counter()
        with StopSignal() as stop:
            status = self._loop(batches, bar, stop)
        bar.close()
        wall = time.perf_counter() - start
        if status:
            return status
        self._finish(start_step, wall)
        return 0

    def _loop(self, batches: Iterator[dict], bar: Any, stop: StopSignal) -> int:
        """Train to `max_steps`; 143 when a SIGTERM/SIGUSR1 stopped it (after a checkpoint), else 0."""
        fabric, t = self.fabric, self.cfg.training
        loss_sum, steps_since_log, t_log = torch.zeros((), device=fabric.device), 0, time.perf_counter()
        while self.step < t.max_steps:
            # On several ranks the check is a collective: only at the logging interval (a host sync anyway).
            check = fabric.world_size == 1 or self.step % t.log_every_n_steps == 0
            if check and stop.should_stop(self._any_rank):
                if self.last_saved != self.step:
                    self._save()
                if self.rank0:
                    requeued = stop.requeue()
                    print(f"lapa train-vla: stopped by {stop.received.name} at step {self.step}; "
                          + ("the job was requeued" if requeued else
                             f"continue with the same command and resume=auto (checkpoint {self.run_dir.last})"))
                return EXIT_STOPPED
            loss, norm = self._train_step(batches)
            loss_sum += loss
            steps_since_log += 1
            if self.step % t.log_every_n_steps == 0 or self.step == t.max_steps:
                mean = all_reduce_(loss_sum / steps_since_log) / fabric.world_size  # a host sync, only here
                elapsed = time.perf_counter() - t_log
                metrics = {"train/loss": float(mean), "train/lr": self.scheduler.get_last_lr()[0],
                           "train/steps_per_s": steps_since_log / elapsed,
                           "train/samples_per_s": steps_since_log * self.effective_batch / elapsed,
                           "train/samples": self.step * self.effective_batch}
                if norm is not None:
                    metrics["train/grad_norm"] = float(norm)
                fabric.log_dict(metrics, step=self.step)
                bar.update(self.step - bar.n)
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{metrics['train/lr']:.2e}")
                loss_sum.zero_()
                steps_since_log, t_log = 0, time.perf_counter()
            due = t.val_check_interval > 0 and self.step % t.val_check_interval == 0
            val = self._validate() if due else None
            best = val is not None and bool(val["model"]) and t.checkpoint.save_best and \
                self.rotation.update_best(self.step, val["model"]["loss"])
            save = best or (t.checkpoint.every_n_steps > 0 and self.step % t.checkpoint.every_n_steps == 0)
            if save:
                self._save()
            if (due or save) and steps_since_log == 0:
                t_log = time.perf_counter()  # the speed logged next measures training, not this
        return 0

    def _any_rank(self, flag: int) -> int:
        """The maximum of `flag` over the ranks (one small all-reduce; a no-op on one process)."""
        if self.fabric.world_size == 1:
            return flag
        return int(all_reduce_(torch.tensor(float(flag), device=self.fabric.device), op="max"))

    def _finish(self, start_step: int, wall: float) -> None:
        """Final validation and checkpoint, the export, the summary."""
        t = self.cfg.training
        best = False
        if self.val is not None and self.last_val_step != self.step:
            val = self._validate()
            best = bool(val and val["model"]) and t.checkpoint.save_best and \
                self.rotation.update_best(self.step, val["model"]["loss"])
        if self.last_saved != self.step:
            self._save()
        elif best and self.rank0:  # a finished run resumed: its last checkpoint is also the best
            self.rotation.commit(self.step)
        steps = self.step - start_step
        summary = {
            "experiment_name": self.cfg.experiment_name, "steps": self.step, "steps_this_run": steps,
            "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 4) if wall > 0 and steps else None,
            "samples_per_s": round(steps * self.effective_batch / wall, 2) if wall > 0 and steps else None,
            "samples_seen": self.step * self.effective_batch, "effective_batch_size": self.effective_batch,
            "accumulate_grad_batches": self.accumulate, "world_size": self.fabric.world_size,
            "final_val": self.last_val["model"], "final_val_floor": self.last_val["floor"],
            "floor_counts": "most frequent label per position among the training labels consumed so far",
            "best_val_loss": self.rotation.best_score, "best_step": self.rotation.best_step,
            "last_checkpoint": str(self.run_dir.last), "best_checkpoint": str(self.run_dir.best)
            if self.rotation.best_step is not None else None,
            "skipped_samples": skipped_samples(),
        }
        info = {"training": {"command": "lapa train-vla", **{k: summary[k] for k in (
            "experiment_name", "steps", "samples_seen", "effective_batch_size", "final_val", "final_val_floor")},
            "data": {"train_shards": str(self.cfg.data.train_shards), "val_shards": self.cfg.data.val_shards},
            "seed": self.cfg.seed}}
        export = export_vla(self.raw, self.out / "export", info)  # collective when sharded
        for logger in self.fabric.loggers:
            logger.finalize("success")
        if self.rank0:
            summary["export"] = str(export)
            self.run_dir.write_summary(summary)
            _print_summary(summary, self.run_dir.root / "summary.json")

    def _print_start(self, ckpt: str | None) -> None:
        counts, cfg, strategy = self.raw.parameter_counts(), self.cfg, self.fabric.strategy
        print(f"lapa train-vla: {cfg.experiment_name}, {counts['trained'] / 1e6:.2f} M trained + "
              f"{counts['frozen'] / 1e6:.2f} M frozen parameters, precision {strategy.precision.precision}, "
              f"{type(strategy).__name__}")
        print(f"  batch {cfg.data.batch_size} x {self.fabric.world_size} device(s) x {self.accumulate} accumulated = "
              f"{self.effective_batch} per step, {cfg.training.max_steps} steps; writing to {self.out.resolve()}")
        print(f"  resuming from {ckpt} at step {self.step}" if ckpt else "  starting a fresh run")


def _print_summary(s: dict, path: Path) -> None:
    v, f = s["final_val"], s["final_val_floor"]
    print(f"lapa train-vla: done, {s['steps']} steps ({s['steps_this_run']} in this run) in {s['wall_s']:.1f} s "
          f"({s['steps_per_s'] or 0:.2f} steps/s, {s['samples_per_s'] or 0:.1f} samples/s)")
    if v:
        k = sum(1 for key in v if key.startswith("acc_pos"))
        print(f"  final val ({v['samples']} samples)   model | floor (most frequent training label)")
        for key in ("loss", "acc_top1", "acc_top3", "exact_match", *(f"acc_pos{i}" for i in range(k))):
            print(f"    {key:<12} {v[key]:>10.4f} | {f[key]:.4f}")
    if s["best_val_loss"] is not None:
        print(f"  best val loss {s['best_val_loss']:.4f} at step {s['best_step']}: {s['best_checkpoint']}")
    if s["skipped_samples"]:
        print(f"  skipped samples: {s['skipped_samples']}")
    print(f"  last checkpoint {s['last_checkpoint']}\n  export {s['export']} (VLA.from_pretrained)\n  summary {path}")
