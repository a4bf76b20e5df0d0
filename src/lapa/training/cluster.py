"""Where and how a training job runs: cluster/precision settings (spec section 2.1.3, `cluster/*.yaml`)
and the distributed environment a process finds itself in.

`dist_env()` is the one place that reads rank, world size and local rank: from an initialised
`torch.distributed` process group when there is one, else from the launcher's environment (torchrun's
RANK / WORLD_SIZE / LOCAL_RANK, Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID). `resolve_device`
turns `auto | cpu | cuda | cuda:N` into the device of this process (cuda:LOCAL_RANK under a launcher).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lapa.config import require


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _env_int(*names: str) -> int | None:
    """The first of `names` set to an integer in the environment."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def dist_env() -> DistEnv:
    """(rank, world size, local rank): torch.distributed when initialised, else torchrun's or Slurm's
    environment variables, else a single process."""
    import torch.distributed as dist

    local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local)
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    return DistEnv(rank, world, local)


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def valid_device(name: str) -> bool:
    """Whether `name` is a device setting `resolve_device` understands."""
    return name in {"auto", "cpu", "cuda"} or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str = "auto"):
    """The torch device of this process: `auto` is cuda:(LOCAL_RANK mod visible GPUs) when CUDA is
    available, else cpu; any other name is taken as given."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_env().local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class SlurmConfig:
    partition: str | None = None  # Slurm partition (sbatch --partition)
    qos: str | None = None  # Slurm quality of service
    account: str | None = None  # Slurm account to charge


@dataclass
class StorageConfig:
    data_root: str = "data"  # where this cluster keeps shards (data presets lie below it)
    checkpoint_dir: str = "runs/checkpoints"  # where runs of the paper presets write
    log_dir: str = "runs/logs"  # where job logs go


@dataclass
class ClusterConfig:
    """Compute resources and distributed settings. `accelerator: auto` picks a GPU when one is present."""

    name: str = "local_dev"  # the cluster preset (cluster/<name>.yaml)
    num_nodes: int = 1  # machines
    devices: int | str = 1  # per node; "auto" uses every visible device
    accelerator: str = "auto"  # auto | cpu | gpu
    precision: str = "auto"  # auto (bf16-mixed on GPU, 32-true on CPU) | 32-true | bf16-mixed | 16-mixed
    strategy: str = "auto"  # auto | ddp | fsdp
    backend: str | None = None  # nccl | gloo; None lets Lightning choose
    cpus_per_task: int = 2  # CPU cores per task (one task per device)
    mem_gb: int = 16  # memory per node
    time_limit: str = "01:00:00"  # Slurm time limit (HH:MM:SS)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        require(self.num_nodes >= 1, "cluster.num_nodes", self.num_nodes, "must be >= 1")
        require(
            self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1),
            "cluster.devices", self.devices, "must be a positive integer or 'auto'",
        )
        require(self.accelerator in {"auto", "cpu", "gpu", "cuda"}, "cluster.accelerator",
                self.accelerator, "must be one of auto, cpu, gpu, cuda")
        require(self.precision in {"auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"},
                "cluster.precision", self.precision,
                "must be one of auto, 32-true, bf16-mixed, 16-mixed, bf16-true")
        require(self.strategy in {"auto", "ddp", "fsdp", "ddp_spawn"}, "cluster.strategy",
                self.strategy, "must be one of auto, ddp, fsdp, ddp_spawn")

    def resolved_precision(self) -> str:
        """`auto` becomes bf16-mixed when a CUDA device will be used, else 32-true."""
        if self.precision != "auto":
            return self.precision
        import torch

        on_gpu = self.accelerator in {"gpu", "cuda"} or (
            self.accelerator == "auto" and torch.cuda.is_available())
        return "bf16-mixed" if on_gpu else "32-true"


def apply_precision(cluster: ClusterConfig) -> str:
    """Resolve `cluster.precision` and set the process-wide matmul precision it calls for; returns the
    resolved precision (what Trainer/Fabric take as `precision=`).

    Mixed precision (bf16/16) lets the float32 matmuls that remain (the parts autocast leaves in fp32)
    use TF32 on Ampere and newer: `set_float32_matmul_precision("high")`. A 32-true run keeps full fp32.
    Call once per process, before the model runs.
    """
    import torch

    precision = cluster.resolved_precision()
    if precision in {"bf16-mixed", "16-mixed"}:
        torch.set_float32_matmul_precision("high")
    return precision


def make_strategy(cluster: ClusterConfig, fabric: bool = False) -> Any:
    """The `strategy=` argument of the Lightning Trainer (or Fabric with `fabric=True`): `ddp` with the
    configured process-group backend (gloo on CPU, nccl on GPU; None lets Lightning choose); any other
    name is passed through for Lightning to resolve."""
    if cluster.strategy != "ddp":
        return cluster.strategy
    if fabric:
        from lightning.fabric.strategies import DDPStrategy
    else:
        from lightning.pytorch.strategies import DDPStrategy
    return DDPStrategy(process_group_backend=cluster.backend)
