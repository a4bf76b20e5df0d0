"""The config of `lapa train-vla` (conf/train_vla.yaml, presets conf/experiment/vla_*.yaml) and the checks
that need the data: the labels in the shards must fit the model's head.

Effective batch (spec 2.2.5): data.batch_size (per device) x devices x nodes x accumulation. Set
`training.global_batch_size` and the accumulation follows (it must divide exactly); leave it null and
`training.accumulate_grad_batches` is used as given.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice

from lapa.config import ConfigError, require
from lapa.data.formats import ShardFormat
from lapa.data.latent_labelled import LATENT, latent_labelled
from lapa.data.loader import DataConfig
from lapa.data.shards import decode_npy, list_shards
from lapa.data.tar_reader import read_shards
from lapa.training.cluster import ClusterConfig
from lapa.training.loggers import WandbConfig, check_logger
from lapa.training.loop_checks import check_loop, check_run_options
from lapa.training.schedule import SchedulerConfig
from lapa.vla.distributed import INIT
from lapa.vla.model import VLAConfig
from lapa.vla.optim import OptimizerConfig
from lapa.vla.parallelize import ParallelConfig

PEEK_SAMPLES = 64  # labels read from the first training shard at start to check them against the head


@dataclass
class CheckpointConfig:
    """`training.checkpoint`: periodic `step_N` (the newest `keep` kept), `last`, and `best` (lowest val loss)."""

    every_n_steps: int = 1000  # optimiser steps between checkpoints; 0: only at the end
    keep: int = 5  # newest periodic checkpoints kept (besides the targets of `last` and `best`)
    save_best: bool = True  # a validation with a new lowest loss saves a checkpoint (off schedule if need be)

    def __post_init__(self) -> None:
        require(self.every_n_steps >= 0, "training.checkpoint.every_n_steps", self.every_n_steps, "must be >= 0")
        require(self.keep >= 1, "training.checkpoint.keep", self.keep, "must be >= 1 (the newest is the one to resume)")


@dataclass
class VLATrainingConfig:
    """`training`: the loop of `lapa train-vla` (steps are optimiser steps)."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_steps: int = 20000
    global_batch_size: int | None = None  # effective batch; null: batch x devices x nodes x accumulate_grad_batches
    accumulate_grad_batches: int = 1  # used when global_batch_size is null
    gradient_clip_val: float = 1.0  # max global gradient norm; 0: no clipping
    val_check_interval: int = 1000  # optimiser steps between validations; 0: only at the end
    limit_val_batches: int | None = 50  # validation batches per rank; null: every validation sample
    log_every_n_steps: int = 50
    init: str = "auto"  # auto (meta-device init when sharded over several devices) | meta | direct
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # FSDP2 / compile / activation checkpointing
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        check_loop(self)
        require(self.global_batch_size is None or self.global_batch_size >= 1, "training.global_batch_size",
                self.global_batch_size, "must be >= 1 or null")
        require(self.init in INIT, "training.init", self.init, f"must be one of {', '.join(INIT)}")

    def accumulation(self, batch_size: int, world: int) -> int:
        """Micro-batches per optimiser step for `batch_size` per device on `world` devices."""
        if self.global_batch_size is None:
            return self.accumulate_grad_batches
        per_pass = batch_size * world
        require(self.global_batch_size % per_pass == 0, "training.global_batch_size", self.global_batch_size,
                f"must be a multiple of data.batch_size x devices x nodes = {batch_size} x {world} = {per_pass}")
        return self.global_batch_size // per_pass


@dataclass
class TrainVLAConfig:
    """The config of `lapa train-vla` (conf/train_vla.yaml)."""

    model: VLAConfig = field(default_factory=VLAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: VLATrainingConfig = field(default_factory=VLATrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    experiment_name: str = "vla"
    seed: int = 42
    output_dir: str = "runs/vla"
    # null: a fresh run | auto: output_dir/checkpoints/last (or last.ckpt) if present | PATH of a checkpoint
    resume: str | None = None
    overwrite: bool = False  # true: delete the run already in output_dir (checkpoints, export, logs) and start over
    logger: str = "csv"  # csv | tensorboard | wandb
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        check_logger(self.logger)
        check_run_options(self.output_dir, self.resume, directories=True,
                          checkpoint="an existing checkpoint (a .ckpt file or a DCP checkpoint directory)")
        require(self.model.stage == 2, "model.stage", self.model.stage,
                "must be 2: train-vla predicts latent actions (Stage 3 robot actions are `lapa finetune`)")
        require(self.cluster.strategy in ("auto", "fsdp"), "cluster.strategy", self.cluster.strategy,
                "must be auto or fsdp: train-vla shards the VLA with FSDP2 when it runs on several devices")
        if isinstance(self.cluster.devices, int):  # else checked at start, when the device count is known
            self.training.accumulation(self.data.batch_size, self.cluster.devices * self.cluster.num_nodes)


def check_data(cfg: TrainVLAConfig) -> ShardFormat:
    """The shard format for the model's head, after checking that the shards exist and that the labels
    of the first training shard fit the head: as many tokens per sample as the model predicts (the LAQ's
    code_seq_len) and within its classes (the LAQ's codebook_size). A mismatch would otherwise skip every
    sample as "bad latent". Of the first `PEEK_SAMPLES` labels, most of another length, or more than 5%
    (at least 2) outside the classes, mean another LAQ: `ConfigError` naming the key. A stray bad label
    is a corrupt sample, which the loader skips and counts."""
    head = cfg.model.head
    tokens, classes = head.num_outputs, head.num_classes
    urls = {}
    for key in ("train_shards", "val_shards"):
        spec = getattr(cfg.data, key)
        if spec is not None:
            try:
                urls[key] = list_shards(spec)
            except FileNotFoundError:
                raise ConfigError(f"data.{key}={spec!r}: no shards found") from None
    shapes, outside, seen = [], [], 0
    with closing(read_shards(urls["train_shards"][:1])) as samples:
        for sample in islice(samples, PEEK_SAMPLES):
            try:
                label = decode_npy(sample[LATENT])
            except (KeyError, ValueError):
                continue  # a corrupt sample: the loader skips and counts it
            seen += 1
            where = f"{sample.get('__url__')} sample {sample.get('__key__')}"
            if label.shape != (tokens,):
                shapes.append((list(label.shape), where))
            elif label.size and (label.min() < 0 or label.max() >= classes):
                outside.append((label.tolist(), where))
    if shapes and len(shapes) * 2 > seen:
        shape, where = shapes[0]
        raise ConfigError(f"model.head.num_queries={head.num_queries}: the model predicts {tokens} latent tokens per "
                          f"sample (num_queries x outputs_per_query) but {len(shapes)} of the first {seen} labels "
                          f"have another shape, e.g. {shape} ({where}); it must equal the LAQ's code_seq_len")
    if len(outside) >= 2 and len(outside) > 0.05 * seen:
        label, where = outside[0]
        raise ConfigError(f"model.head.num_classes={classes}: {len(outside)} of the first {seen} labels lie outside "
                          f"0..{classes - 1}, e.g. {label} ({where}); it must equal the LAQ's codebook_size")
    return latent_labelled(tokens, classes)
