"""Distribute the VLA over data-parallel ranks with FSDP2 (DESIGN.md sections 3 and 13; torchtitan's
`parallelize.py`). `model.py` knows nothing of distribution; `parallelize_vla` applies, in this order,

1. activation checkpointing of each LM decoder layer (`checkpoint_wrapper`, non-reentrant),
2. `torch.compile` of each LM decoder layer (regional compile: one graph shared by every layer),
3. `fully_shard` (FSDP2) of each decoder layer, then of the projector, then of the root (embeddings,
   ACT queries, final norm, head), with `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`
   when mixed precision applies.

The spec's FSDP1 settings map to FSDP2 as follows: FULL_SHARD -> `reshard_after_forward=True`
(SHARD_GRAD_OP -> False); `MixedPrecision(param_dtype=bf16, reduce_dtype=fp32, buffer_dtype=fp32)` ->
`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (buffers are never cast by FSDP2); auto-wrap
of `LlamaDecoderLayer` -> `fully_shard` on each decoder layer (found through the LM's own
`_no_split_modules`, so any HF decoder-only LM works), then on the root.

The frozen vision tower is NOT sharded: it is passed to the root's `fully_shard` as `ignored_params`, so
every rank keeps a whole replica (cast to bf16 on GPU when mixed precision applies, as OpenVLA's
Prismatic FSDP strategy does). It has no gradients and no optimiser state, so sharding would save only
its bf16 weights (1.4 GB at the 7B size) while costing an all-gather of them on every forward; FSDP
would also reduce nothing for it. Replicated frozen weights stay identical on every rank because nothing
updates them.

Usable as Lightning's `ModelParallelStrategy(parallelize_fn=partial(parallelize_vla, cfg=...))` in Fabric
(Stage 2) and the Trainer (Stage 3). That strategy passes a 2-D mesh ("data_parallel",
"tensor_parallel"); the VLA applies no tensor parallelism, so FSDP shards over the data-parallel
dimension, and over the whole mesh when the tensor-parallel dimension is larger than one (Lightning's
default sizes are data_parallel = nodes, tensor_parallel = devices per node). Pass data_parallel_size =
world size, tensor_parallel_size = 1 (as `lapa.training.fabric.make_fabric` does): Lightning's distributed
sampler splits data over the "data_parallel" dimension only.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lapa.config import require

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from lapa.vla.model import VLA

log = logging.getLogger(__name__)

MIXED_PRECISION = ("auto", "bf16", "none")


@dataclass
class ParallelConfig:
    activation_checkpointing: bool = False  # checkpoint each LM decoder layer (recompute in backward)
    compile: bool = False  # torch.compile each LM decoder layer (regional compile)
    reshard_after_forward: bool = True  # FULL_SHARD (the spec's FSDP1 setting) vs SHARD_GRAD_OP
    # auto: bf16 params / fp32 gradient reduction on CUDA, none on CPU | bf16 | none
    mixed_precision: str = "auto"
    # Gradient accumulation: false = reduce-scatter gradients only on the last micro-batch (less traffic;
    # FSDP2 then holds unsharded gradients between micro-batches: ~2 bytes x trained params more per GPU
    # in bf16, ~13 GB at 7B); true = on every micro-batch (sharded gradients only: the memory-lean choice).
    sync_every_microbatch: bool = False

    def __post_init__(self) -> None:
        require(self.mixed_precision in MIXED_PRECISION, "mixed_precision", self.mixed_precision,
                f"must be one of {MIXED_PRECISION}")

    def param_dtype(self, device_type: str) -> torch.dtype | None:
        """The dtype FSDP all-gathers parameters in (None: they stay fp32)."""
        if self.mixed_precision == "bf16" or (self.mixed_precision == "auto" and device_type == "cuda"):
            return torch.bfloat16
        return None


# ------------------------------------------------------------------------------------------ mesh
def data_parallel_mesh(device_mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh FSDP shards over: a 1-D mesh as given; of Lightning's 2-D ("data_parallel",
    "tensor_parallel") mesh the data-parallel dimension, or the whole mesh flattened when its
    tensor-parallel dimension has more than one rank (the VLA has no tensor-parallel plan, so those ranks
    are data-parallel too; Lightning's distributed sampler would then split data by the "data_parallel"
    dimension only, hence the warning)."""
    if device_mesh.ndim == 1:
        return device_mesh
    names = device_mesh.mesh_dim_names or ()
    if names != ("data_parallel", "tensor_parallel") or device_mesh.ndim != 2:
        raise ValueError(f"parallelize_vla: expected a 1-D mesh or Lightning's ('data_parallel', "
                         f"'tensor_parallel') mesh, got dims {names} of shape {tuple(device_mesh.shape)}")
    if device_mesh["tensor_parallel"].size() == 1:
        return device_mesh["data_parallel"]
    if device_mesh.get_rank() == 0:
        log.warning("parallelize_vla: the mesh has tensor_parallel=%d but the VLA uses no tensor parallelism; "
                    "sharding over all %d ranks. Pass data_parallel_size=<world size>, tensor_parallel_size=1 "
                    "to ModelParallelStrategy (lapa.training.fabric.make_fabric does) so that Lightning's "
                    "distributed sampler gives every rank different data.",
                    device_mesh["tensor_parallel"].size(), device_mesh.size())
    return device_mesh._flatten("data_parallel_all")  # torchtitan flattens its dp dims the same way


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    """The device this rank computes on: FSDP2 uses the current CUDA device for a CUDA mesh."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


# ------------------------------------------------------------------------------------------ layers
def decoder_layers(lm: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent ModuleList, child name) of every decoder layer of an HF decoder-only LM: the classes the
    model lists in `_no_split_modules` (LlamaDecoderLayer, GPT2Block, Qwen2DecoderLayer, ...), else the
    children of its longest ModuleList."""
    classes = set(getattr(lm, "_no_split_modules", None) or ())
    found = [(parent, name) for parent in lm.modules() if isinstance(parent, nn.ModuleList)
             for name, child in parent.named_children() if type(child).__name__ in classes]
    if not found:
        lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList)]
        if not lists:
            raise ValueError(f"parallelize_vla: found no decoder layers in {type(lm).__name__}")
        longest = max(lists, key=len)
        found = [(longest, name) for name, _ in longest.named_children()]
    return found


def apply_activation_checkpointing(layers: list[tuple[nn.Module, str]]) -> None:
    """Wrap each layer in a non-reentrant checkpoint: its activations are recomputed in backward. The
    wrapper's state-dict hooks strip its prefix, so `state_dict()` and DCP checkpoints keep their keys
    (and load with activation checkpointing on or off); RNG state is preserved for LMs with dropout."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for parent, name in layers:
        parent.register_module(name, checkpoint_wrapper(getattr(parent, name)))


def apply_compile(layers: list[tuple[nn.Module, str]], **compile_kwargs: Any) -> None:
    """`torch.compile` each layer in place (`nn.Module.compile`: names unchanged). All layers share one
    code object, so they share graphs; FSDP2's hooks stay outside the graphs (dynamo skips them)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for parent, name in layers:
        getattr(parent, name).compile(**compile_kwargs)


# ------------------------------------------------------------------------------------------ entry
def parallelize_vla(model: VLA, device_mesh: DeviceMesh, cfg: ParallelConfig | None = None) -> VLA:
    """Apply activation checkpointing, per-layer compile and FSDP2 to `model` in place (see the module
    docstring) and return it. Works on a one-rank mesh (parameters become one-shard DTensors) and on
    CPU with gloo. Build the model with real weights on the host (not under Fabric's `empty_init`): the
    frozen vision tower is pretrained and is never re-initialised."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cfg = cfg or ParallelConfig()
    mesh = data_parallel_mesh(device_mesh)
    device = _mesh_device(mesh)
    param_dtype = cfg.param_dtype(mesh.device_type)
    layers = decoder_layers(model.lm)

    if cfg.activation_checkpointing:
        apply_activation_checkpointing(layers)
    if cfg.compile:
        apply_compile(layers)

    # The frozen vision tower: a whole replica on this rank's device, in bf16 under mixed precision.
    # fully_shard moves neither ignored parameters nor (by itself) their dtype, so this is done here.
    vision = model.vision
    if not any(p.is_meta for p in vision.parameters()):
        vision.to(device=device, dtype=param_dtype or next(vision.parameters()).dtype)
    ignored = set(vision.parameters())

    if param_dtype is not None:
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        # The root's inputs are images and token ids: floats among them (images in [0, 1]) must not be
        # rounded to bf16 before the vision tower normalises them. `VLA.embed` casts to the LM's dtype.
        root_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                       cast_forward_inputs=False)
    else:
        mp = root_mp = MixedPrecisionPolicy()
    shard = partial(fully_shard, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    for parent, name in layers:
        shard(getattr(parent, name))
    shard(model.projector)  # 26 M parameters at the 7B size, used once at the start of the forward
    # Root group: token embeddings, ACT queries, final norm, head. Its reshard_after_forward stays at
    # FSDP2's root default (False): backward needs these parameters first, right after the forward.
    fully_shard(model, mesh=mesh, mp_policy=root_mp, ignored_params=ignored)
    # The VLA returns its logits as a view (the head's reshape), which FSDP2 warns about on every
    # process because an in-place op on it would skip the root's pre-backward hook. The logits are only
    # read out of place (`VLA.loss`, argmax), so the warning says nothing here; only this one is hidden.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPVLA\) returned a view tensor")
    return model

