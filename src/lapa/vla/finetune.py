"""`lapa finetune`: Stage 3, the VLA learns robot actions from a few demonstrations (spec 2.3), with the
Lightning Trainer.

The model (spec 2.3.1, approach A): a Stage 2 export (`init=DIR`) whose latent head is replaced by the
action head, LayerNorm + Linear(d -> 7 x K x 256), read from ONE ACT token (the first of the Stage 2
ACT queries is kept; every other weight of the export is kept as it is), or the same architecture from
the model preset with random LM/projector/ACT/head (`init=scratch`, the baseline). The vision towers stay
frozen; the LM (or only its LoRA adapters, `lora.enabled=true`), the projector, the ACT query and the
head train. With `action_chunk=K` the head predicts the next K actions of the episode from the same
forward (targets padded with the episode's last action).

Writes into `output_dir`:
    config.yaml                 the resolved config (also inside every checkpoint)
    action_stats.json           the action tokenizer fitted on the chosen training demonstrations
    checkpoints/step_N.ckpt, last.ckpt, best.ckpt (lowest val/loss)
    logs/                       CSV / TensorBoard / W&B: train/*, val/*
    pictures/val_step_N.png     predicted vs true action per dimension (held-out steps)
    export/                     the policy: `VLA.from_pretrained` + `ActionTokenizer.load` (LoRA merged)
    summary.json                steps, wall time, final validation metrics, demos used, paths

Resume (`resume=auto`) restores weights, optimiser, schedule, step and the data stream's position
(`LAPADataModule`), and `SeedPerBatch` seeds every batch by its number: a resumed run continues the
uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lapa.config import ConfigError, to_dict, to_yaml
from lapa.vla.finetune_config import FinetuneConfig
from lapa.vla.finetune_model import apply_lora, build_finetune_model, has_lora, merge_lora, swap_head
from lapa.vla.finetune_task import ActionFinetuneTask, EpisodeActions

log = logging.getLogger(__name__)

__all__ = ["ActionFinetuneTask", "EpisodeActions", "FinetuneConfig", "apply_lora", "build_finetune_model",
           "merge_lora", "run", "swap_head"]

RUN_OUTPUTS = ("action_stats.json", "export", "logs", "pictures")



# ---------------------------------------------------------------------------------------------- the data
def finetune_datamodule(cfg: FinetuneConfig) -> Any:
    """`LAPADataModule` of robot-step shards (the loader keeps the stream position in every checkpoint).
    Sharded runs validate in lockstep: a rank out of validation batches runs a dummy one (`data.lockstep`)."""
    from lapa.data.datamodule import LAPADataModule
    from lapa.data.robot_steps import ROBOT_STEPS

    return LAPADataModule(cfg.data, fmt=ROBOT_STEPS, dummy_batch=dummy_step_batch if sharded(cfg) else None)


def dummy_step_batch() -> dict:
    """A one-sample robot-step batch for lockstep validation (its results are dropped; the backbones
    resize any image, so its size does not matter)."""
    return {"image": torch.zeros(1, 3, 32, 32), "text": [""], "actions": torch.zeros(1, 7),
            "episode_id": [""], "step": torch.zeros(1, dtype=torch.int64)}


# ---------------------------------------------------------------------------------------------- the command
def sharded(cfg: FinetuneConfig) -> bool:
    """Whether the run shards the VLA (FSDP2 under ModelParallelStrategy): cluster.strategy=fsdp, or more
    than one device in all."""
    c = cfg.cluster
    if c.strategy == "fsdp":
        return True
    if isinstance(c.devices, int):
        return c.devices * c.num_nodes > 1
    on_gpu = c.accelerator in ("gpu", "cuda") or (c.accelerator == "auto" and torch.cuda.is_available())
    return (torch.cuda.device_count() if on_gpu else 1) * c.num_nodes > 1


def build_trainer(cfg: FinetuneConfig, callbacks: list, logger: Any) -> L.Trainer:
    """The Trainer from `training` (loop, clipping) and `cluster` (devices, precision): one device plain;
    several (or cluster.strategy=fsdp) under ModelParallelStrategy, sharded by `parallelize_vla`."""
    from lapa.training.lightning_callbacks import (
        AtomicCheckpointIO,
        StepProgressBar,
        atomic_model_parallel_strategy,
        quiet_lightning,
    )

    quiet_lightning()
    t, c = cfg.training, cfg.cluster
    plugins: list = []
    if sharded(cfg):
        from lapa.training.fabric import world_size

        # Every process is a data-parallel rank (the VLA has no tensor parallelism): the default sizes
        # would make a (nodes, devices) mesh, and give all GPUs of a node the same samples.
        strategy: Any = atomic_model_parallel_strategy(data_parallel_size=world_size(c), tensor_parallel_size=1)
    else:
        strategy, plugins = "auto", [AtomicCheckpointIO()]
    return L.Trainer(
        accelerator="gpu" if c.accelerator == "cuda" else c.accelerator, devices=c.devices, num_nodes=c.num_nodes,
        strategy=strategy, precision=c.resolved_precision(), max_steps=t.max_steps, max_epochs=-1,
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches if t.limit_val_batches is not None else 1.0, num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val or None,
        callbacks=[*callbacks, StepProgressBar(refresh_rate=t.log_every_n_steps)], logger=logger,
        default_root_dir=cfg.output_dir, plugins=plugins, enable_model_summary=False)


def prepare(cfg: FinetuneConfig) -> dict[str, Any]:
    """Everything decided before training, in order, each failing with a `ConfigError` naming its key:
    the inputs, the chosen demonstrations, the action tokenizer fitted on them, the model."""
    from lapa.data.episodes import choose_episodes, episode_actions, scan_episodes
    from lapa.data.shards import list_shards
    from lapa.vla.action_tokenizer import ActionTokenizer

    cfg.check_inputs()
    index = scan_episodes(list_shards(cfg.data.train_shards))
    if not index.steps:
        raise ConfigError(f"data.train_shards={cfg.data.train_shards!r}: no robot steps with an episode_id found")
    choice = choose_episodes(index, cfg.data.max_episodes, cfg.data.episodes_seed)
    actions = episode_actions(choice.urls, choice.ids)
    if len(actions) == 0:
        raise ConfigError(f"data.train_shards={cfg.data.train_shards!r}: the chosen episodes hold no valid action")
    tok = ActionTokenizer.fit(actions, num_bins=cfg.num_bins, binning=cfg.binning)
    model, source = build_finetune_model(cfg)
    train_actions = val_actions = None
    if cfg.action_chunk > 1:
        train_actions = EpisodeActions(choice.urls, choice.ids)
        val_actions = EpisodeActions(cfg.data.val_shards) if cfg.data.val_shards else None
    return {"choice": choice, "tokenizer": tok, "model": model, "source": source, "train_actions": train_actions,
            "val_actions": val_actions, "demo_steps": len(actions)}


def run(cfg: FinetuneConfig, datamodule: Any = None) -> int:
    """Finetune the VLA on robot-step shards; `resume=auto` continues a stopped run in `output_dir`.

    Examples:
        lapa finetune experiment=finetune_debug init=runs/vla_debug/export data.max_episodes=10
        lapa finetune experiment=finetune_debug init=scratch data.max_episodes=10      # the baseline
        lapa finetune experiment=finetune_7b init=runs/vla_7b/export lora.enabled=true resume=auto
    """
    from lightning.pytorch.utilities import rank_zero_only

    from lapa.data.skips import skipped_samples
    from lapa.training.cluster import apply_precision
    from lapa.training.lightning_callbacks import (
        checkpoint_callbacks,
        checkpoint_step,
        fit_to_the_end,
        run_callbacks,
    )
    from lapa.training.loggers import make_logger
    from lapa.training.run_dir import RunDir
    from lapa.vla.distributed import export_vla

    out = Path(cfg.output_dir)
    run_dir = RunDir(out)
    rank0 = rank_zero_only.rank == 0
    try:
        ckpt_path = run_dir.start(cfg.resume, cfg.overwrite, outputs=RUN_OUTPUTS, rank_zero=rank0)
        ready = prepare(cfg)
    except ConfigError as err:
        print(f"lapa finetune: invalid config: {err}", file=sys.stderr, flush=True)
        return 2
    if rank0:
        for path in run_dir.clean(checkpoint_step(ckpt_path) if ckpt_path else None):
            log.info("removed %s: newer than the resumed state, it will be written again", path.name)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    precision = apply_precision(cfg.cluster)
    tok, model, choice = ready["tokenizer"], ready["model"], ready["choice"]
    task = ActionFinetuneTask(model, tok, cfg.training, cfg.action_chunk, ready["train_actions"],
                              ready["val_actions"], parallel=cfg.training.parallel, picture_dir=out / "pictures")
    if datamodule is None:
        datamodule = finetune_datamodule(cfg)
    config_dict, config_yaml = to_dict(cfg), to_yaml(cfg)
    ck = cfg.training.checkpoint
    has_val = bool(cfg.data.val_shards)
    ckpt_callbacks, best_cb = checkpoint_callbacks(run_dir.checkpoints, ck.every_n_steps, ck.keep,
                                                   ck.save_best and has_val, ck.monitor)
    common, run_start = run_callbacks(run_dir.last, config_dict, config_yaml, cfg.seed)
    callbacks = [*ckpt_callbacks, *common]
    trainer = build_trainer(cfg, callbacks, make_logger(cfg.logger, out, cfg.experiment_name, cfg.wandb))
    if trainer.is_global_zero:
        run_dir.write_config(config_yaml)
        tok.save(out)
        counts = model.parameter_counts()
        print(f"lapa finetune: {cfg.experiment_name}, init={cfg.init}, {counts['trained'] / 1e6:.2f} M trained + "
              f"{counts['frozen'] / 1e6:.2f} M frozen parameters{' (LoRA)' if cfg.lora.enabled else ''}, "
              f"precision {precision}")
        print(f"  {len(choice.ids)} demonstrations ({choice.steps} steps), action_chunk={cfg.action_chunk}, "
              f"{cfg.training.max_steps} steps; writing to {out.resolve()}")
        print(f"  resuming from {ckpt_path}" if ckpt_path else "  starting a fresh run")
    status, wall = fit_to_the_end(trainer, task, datamodule, ckpt_path, command="finetune", last=run_dir.last,
                                  has_val=has_val)
    if status is not None:
        return status
    steps = trainer.global_step - run_start.start_step
    demos = {"episodes": len(choice.ids), "steps": choice.steps, "episodes_seed": cfg.data.episodes_seed,
             "max_episodes": cfg.data.max_episodes, "ids": sorted(choice.ids)[:1000]}
    info = {"training": {"command": "lapa finetune", "experiment_name": cfg.experiment_name, **ready["source"],
                         "steps": trainer.global_step, "action_chunk": cfg.action_chunk,
                         "lora": to_dict(cfg.lora) if cfg.lora.enabled else None, "demos": demos,
                         "data": {"train_shards": str(cfg.data.train_shards), "val_shards": cfg.data.val_shards,
                                  "image_size": cfg.data.image_size},  # the policy resizes frames to it
                         "final_val": task.last_val, "seed": cfg.seed}}
    if has_lora(task.model):
        merge_lora(task.model)
    export = export_vla(task.model, out / "export", info)  # collective when sharded
    if not trainer.is_global_zero:
        return 0
    tok.save(export)
    summary = {"experiment_name": cfg.experiment_name, "init": cfg.init, "steps": trainer.global_step,
               "steps_this_run": steps, "wall_s": round(wall, 2),
               "steps_per_s": round(steps / wall, 4) if wall > 0 and steps else None,
               "action_chunk": cfg.action_chunk, "lora": cfg.lora.enabled, "demos": demos,
               "final_val": task.last_val, "target_nmse": 0.05,
               "best_val_loss": None if best_cb is None or best_cb.best_model_score is None
               else float(best_cb.best_model_score),
               "last_checkpoint": str(run_dir.last), "export": str(export),
               "skipped_samples": skipped_samples()}
    run_dir.write_summary(summary)
    v = task.last_val
    print(f"lapa finetune: done, {summary['steps']} steps ({steps} in this run) in {wall:.1f} s")
    if v:
        print(f"  val ({int(v['samples'])} held-out steps): loss {v['loss']:.4f}, acc {v['acc']:.3f}, "
              f"normalised MSE {v['nmse']:.4f} (target < 0.05; the mean action gives {v['nmse_mean_action']:.4f})")
    print(f"  export {export} (VLA.from_pretrained + ActionTokenizer.load)\n  summary {out / 'summary.json'}")
    return 0
