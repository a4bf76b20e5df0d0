"""Lightning Fabric for the plain training loops (Stage 2; reusable by any stage that writes its own loop).

- `make_fabric(cluster, parallelize_fn=..., loggers=...)`: one process and device -> Fabric's single
  device strategy; more (devices x nodes > 1) -> `ModelParallelStrategy` (FSDP2 through the stage's
  `parallelize_fn`; every rank data-parallel), or DDP for a model without one. Precision from
  `ClusterConfig` (`auto`: bf16-mixed on GPU, 32-true on CPU).
- `checkpoint_suffix(fabric)`: "" (a DCP directory: `fabric.save` under ModelParallelStrategy) or
  ".ckpt" (one file) for `lapa.training.run_dir`.
- Meta-device initialisation (torchtitan's recipe, for models too big to build once per rank): every rank
  builds the model on the meta device, shards it, then `materialize_from_rank0` allocates the local shards
  and fills them with rank 0's full state dict (broadcast tensor by tensor, so no rank but 0 ever holds
  the whole model), buffers included (`full_state_with_buffers`: non-persistent buffers such as rotary
  frequencies are not in a state dict but are garbage after `to_empty`).
- `full_state_dict(model)`: the whole model's state on rank 0's CPU (gathered from the shards), for exports.
- `all_reduce_(tensor, op)`: an in-place all-reduce that is a no-op on one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lapa.config import ConfigError
from lapa.training.cluster import ClusterConfig, apply_precision

DCP_SUFFIX, FILE_SUFFIX = "", ".ckpt"


def _uses_gpu(cluster: ClusterConfig) -> bool:
    return cluster.accelerator in {"gpu", "cuda"} or (cluster.accelerator == "auto" and torch.cuda.is_available())


def devices_per_node(cluster: ClusterConfig) -> int:
    """`cluster.devices` as a number: "auto" is every visible GPU (at least 1), or 1 process on CPU."""
    if cluster.devices != "auto":
        return int(cluster.devices)
    return max(1, torch.cuda.device_count()) if _uses_gpu(cluster) else 1


def world_size(cluster: ClusterConfig) -> int:
    """Processes of the job: devices per node x nodes."""
    return devices_per_node(cluster) * cluster.num_nodes


def make_fabric(cluster: ClusterConfig, *, parallelize_fn: Callable[[nn.Module, Any], nn.Module] | None = None,
                loggers: list | None = None) -> Any:
    """A (not yet launched) Fabric for `cluster`; see the module docstring for the strategy."""
    from lightning.fabric import Fabric

    if cluster.strategy not in {"auto", "fsdp", "ddp"}:
        raise ConfigError(f"cluster.strategy={cluster.strategy!r}: a Fabric loop takes auto, fsdp (FSDP2 when "
                          f"several devices are used) or ddp")
    world = world_size(cluster)
    strategy: Any = "auto"
    if world > 1 and cluster.strategy != "ddp" and parallelize_fn is not None:
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(parallelize_fn=parallelize_fn, data_parallel_size=world,
                                         tensor_parallel_size=1, process_group_backend=cluster.backend)
    elif world > 1:
        from lightning.fabric.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend=cluster.backend)
    accelerator = "cuda" if cluster.accelerator in {"gpu", "cuda"} else cluster.accelerator
    return Fabric(accelerator=accelerator, devices=devices_per_node(cluster), num_nodes=cluster.num_nodes,
                  strategy=strategy, precision=apply_precision(cluster), loggers=loggers or [])


def is_sharded(fabric: Any) -> bool:
    from lightning.fabric.strategies import ModelParallelStrategy

    return isinstance(fabric.strategy, ModelParallelStrategy)


def checkpoint_suffix(fabric: Any) -> str:
    """"" for a DCP directory checkpoint (ModelParallelStrategy), ".ckpt" for a single file."""
    return DCP_SUFFIX if is_sharded(fabric) else FILE_SUFFIX


# ------------------------------------------------------------------------------------------ collectives
def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce `tensor` in place over every rank (`op`: sum | max | min); returns it. Nothing on one
    process. A CPU tensor travels through the current CUDA device under NCCL."""
    if not _distributed():
        return tensor
    import torch.distributed as dist

    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=reduce_op)
        return tensor.copy_(moved)
    dist.all_reduce(tensor, op=reduce_op)
    return tensor


# ------------------------------------------------------------------------------------------ meta init
# Name segments that wrappers add to `named_buffers()` / `named_parameters()` but not to `state_dict()`
# (activation checkpointing's wrapper strips its own in state dicts; `torch.compile`'s wrapper module).
WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter or buffer name without the segments of wrappers: the name in an unwrapped model."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def named_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer (persistent or not) of `model` under its unwrapped name (`clean_name`)."""
    return {clean_name(name): buf for name, buf in model.named_buffers()}


def has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def full_state_with_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """`state_dict()` plus every buffer under its name (the non-persistent ones too): what
    `materialize_from_rank0` fills a meta-built copy of `model` with."""
    state = dict(model.state_dict())
    state.update(named_buffers(model))
    return state


def materialize_from_rank0(model: nn.Module, source: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Allocate a meta-built, already sharded `model` on `device` and copy rank 0's weights into it.

    `source` (rank 0 only; None elsewhere): `full_state_with_buffers` of a real copy of the model.
    Parameters and persistent buffers go through `set_model_state_dict(full_state_dict=True,
    broadcast_from_rank0=True)` (each rank keeps its shard; unsharded tensors are copied whole); every
    buffer is then broadcast (non-persistent ones are not in a state dict). Collective."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.to_empty(device=device)
    rank = dist.get_rank()
    keys = set(model.state_dict())
    params = {k: v for k, v in (source or {}).items() if k in keys} if rank == 0 else {}
    set_model_state_dict(model, params, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else device
    for name, buf in named_buffers(model).items():
        tmp = source[name].to(comm_device, buf.dtype) if rank == 0 else torch.empty_like(buf, device=comm_device)
        dist.broadcast(tmp, src=0)
        with torch.no_grad():
            buf.copy_(tmp)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of `model` on CPU, gathered on rank 0 when its parameters are sharded
    (DTensors; collective: call on every rank); None on the other ranks."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None
