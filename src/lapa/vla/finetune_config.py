"""The config of `lapa finetune` (conf/finetune.yaml, presets conf/experiment/finetune_*.yaml) and the
checks that need the disk: the init export, the shards, the number of demonstrations.

`init` is `scratch` (the model preset `model`, random LM/projector/ACT/head: the baseline every result is
compared with) or the directory of a Stage 2 export (`lapa train-vla`'s `export/`): its config and weights
are used, `model` is ignored, and the latent head is replaced by the action head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lapa.config import ConfigError, require
from lapa.data.loader import DataConfig
from lapa.data.shards import require_shards
from lapa.training.cluster import ClusterConfig
from lapa.training.loggers import WandbConfig, check_logger
from lapa.training.loop_checks import check_loop, check_run_options
from lapa.training.schedule import SchedulerConfig
from lapa.vla.model import VLAConfig
from lapa.vla.optim import OptimizerConfig
from lapa.vla.parallelize import ParallelConfig

ACTION_DIM = 7
BINNINGS = ("uniform", "quantile")


@dataclass
class LoRAConfig:
    """`lora`: peft LoRA adapters on the LM instead of training its full weights (merged on export)."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # Linear layers of the LM to adapt (names as in the HF model), or ["all-linear"].
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        require(self.rank >= 1, "lora.rank", self.rank, "must be >= 1")
        require(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "must be in [0, 1)")
        require(len(self.target_modules) >= 1, "lora.target_modules", self.target_modules,
                "must name at least one module (e.g. [q_proj, v_proj] or [all-linear])")


@dataclass
class FinetuneCheckpointConfig:
    """`training.checkpoint`: `step_N.ckpt` (newest `keep`), `last.ckpt`, `best.ckpt` (lowest `monitor`)."""

    every_n_steps: int = 500  # 0: only last.ckpt at the end (and best.ckpt)
    keep: int = 2
    save_best: bool = True
    monitor: str = "val/loss"

    def __post_init__(self) -> None:
        require(self.every_n_steps >= 0, "training.checkpoint.every_n_steps", self.every_n_steps, "must be >= 0")
        require(self.keep == -1 or self.keep >= 1, "training.checkpoint.keep", self.keep, "must be -1 or >= 1")


@dataclass
class FinetuneTrainingConfig:
    """`training`: the Lightning loop of `lapa finetune` (steps are optimiser steps)."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=2e-5))
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(warmup_steps=100, eta_min=2e-6))
    max_steps: int = 5000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0  # 0: no clipping
    val_check_interval: int = 500  # training batches between validations
    limit_val_batches: int | None = None  # null: every held-out sample
    log_every_n_steps: int = 50
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # FSDP2 settings on several devices
    checkpoint: FinetuneCheckpointConfig = field(default_factory=FinetuneCheckpointConfig)

    def __post_init__(self) -> None:
        check_loop(self, min_val_check_interval=1)
        require(not self.parallel.sync_every_microbatch, "training.parallel.sync_every_microbatch", True,
                "is a lapa train-vla setting; in lapa finetune Lightning synchronises on the last micro-batch")


@dataclass
class FinetuneConfig:
    """The config of `lapa finetune` (conf/finetune.yaml)."""

    init: str = "scratch"  # scratch | DIR of a Stage 2 export (lapa train-vla's output_dir/export)
    model: VLAConfig = field(default_factory=VLAConfig)  # the architecture of init=scratch
    action_chunk: int = 1  # K: the head predicts the next K actions (7 x K bins) from one ACT token
    num_bins: int = 256
    binning: str = "uniform"  # uniform | quantile (lapa.vla.action_tokenizer)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: FinetuneTrainingConfig = field(default_factory=FinetuneTrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    experiment_name: str = "finetune"
    seed: int = 42
    output_dir: str = "runs/finetune"
    resume: str | None = None  # null | auto (output_dir/checkpoints/last.ckpt) | PATH of a .ckpt
    overwrite: bool = False  # true: delete the run already in output_dir and start over
    logger: str = "csv"
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        check_logger(self.logger)
        require(bool(self.init), "init", self.init, "must be 'scratch' or the directory of a Stage 2 export")
        require(self.action_chunk >= 1, "action_chunk", self.action_chunk, "must be >= 1")
        require(2 <= self.num_bins <= 65536, "num_bins", self.num_bins, "must be in 2..65536")
        require(self.binning in BINNINGS, "binning", self.binning, f"must be one of {', '.join(BINNINGS)}")
        check_run_options(self.output_dir, self.resume)
        require(not self.data.hflip, "data.hflip", self.data.hflip,
                "must be false: a mirrored image contradicts the y, roll and yaw of its action")
        require(self.cluster.strategy in ("auto", "fsdp"), "cluster.strategy", self.cluster.strategy,
                "must be auto or fsdp: finetune shards the VLA with FSDP2 when it runs on several devices")

    @property
    def scratch(self) -> bool:
        return self.init == "scratch"

    def check_inputs(self) -> None:
        """At start, before anything is written: the init export and the shards exist."""
        if not self.scratch:
            check_init(self.init)
        what = "robot-step shards (write them with `lapa sim generate` or `lapa import-lerobot`)"
        require_shards("data.train_shards", self.data.train_shards, what)
        if self.data.val_shards:
            require_shards("data.val_shards", self.data.val_shards, what)


def check_init(init: str) -> dict:
    """The info.json of the Stage 2 export `init`; `ConfigError` naming `init` when it is missing, not a
    lapa VLA export, or not a Stage 2 (latent action) export."""
    from lapa.vla.export import read_info

    path = Path(init)
    if not path.is_dir():
        raise ConfigError(f"init={init!r}: no such directory (use init=scratch, or the export/ folder of a "
                          f"lapa train-vla run)")
    try:
        info = read_info(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"init={init!r}: not a Stage 2 export ({err})") from None
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise ConfigError(f"init={init!r}: not a Stage 2 export (no {name})")
    if int(info.get("stage", 0)) != 2:
        raise ConfigError(f"init={init!r}: a stage {info.get('stage')} export; finetune starts from a Stage 2 "
                          f"(latent action) export of lapa train-vla")
    return info
