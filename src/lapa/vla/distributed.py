"""The VLA inside a Fabric job: building it (directly, or on the meta device and materialised from rank 0),
sharding it with `parallelize_vla`, and exporting the trained (possibly sharded) model.

How the model is built (`build_vla`, `training.init`):
- `direct` (and always on one device): every rank builds the whole model on the host, seeded alike, so
  every rank starts from the same weights; Fabric moves it to the device (or FSDP2 shards it there).
- `meta` (`auto` under several devices): rank 0 builds the model on its CPU (loading the pretrained
  weights once), every rank builds an empty copy on the meta device from rank 0's resolved config
  (broadcast), `parallelize_vla` shards the copy, and `lapa.training.fabric.materialize_from_rank0`
  allocates each rank's shards and fills them from rank 0, tensor by tensor: no rank but 0 ever holds the
  whole model, and only rank 0 reads the checkpoints. The replicated frozen vision tower is then cast to
  FSDP's compute dtype, as `parallelize_vla` does for a real tower.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lapa.training.fabric import (
    full_state_dict,
    full_state_with_buffers,
    has_meta,
    is_sharded,
    materialize_from_rank0,
    named_buffers,
)
from lapa.vla.model import VLA, VLAConfig
from lapa.vla.parallelize import ParallelConfig, apply_activation_checkpointing, apply_compile, decoder_layers

INIT = ("auto", "meta", "direct")  # training.init


class VLAParallelize:
    """`parallelize_fn` of Fabric's ModelParallelStrategy: `parallelize_vla` with `cfg`, then, for a
    meta-built model, materialisation from `source` (rank 0's full state, set by `build_vla`)."""

    def __init__(self, cfg: ParallelConfig) -> None:
        self.cfg = cfg
        self.source: dict[str, torch.Tensor] | None = None

    def __call__(self, model: VLA, device_mesh: Any) -> VLA:
        from lapa.vla.parallelize import parallelize_vla

        meta = has_meta(model)
        model = parallelize_vla(model, device_mesh, self.cfg)
        if meta:
            device = (torch.device("cuda", torch.cuda.current_device()) if device_mesh.device_type == "cuda"
                      else torch.device(device_mesh.device_type))
            materialize_from_rank0(model, self.source, device)
            self.source = None
            dtype = self.cfg.param_dtype(device.type)
            if dtype is not None:
                model.vision.to(dtype=dtype)
        return model


def build_vla(config: VLAConfig, fabric: Any, init: str, parallel: ParallelConfig,
              parallelize: VLAParallelize | None, seed: int) -> VLA:
    """The VLA of this rank, ready for `fabric.setup_module` (see the module docstring). On one device,
    `parallel.activation_checkpointing` / `parallel.compile` are applied here (there is no parallelize
    step); under ModelParallelStrategy `parallelize_vla` applies them."""
    torch.manual_seed(seed)
    sharded = is_sharded(fabric)
    if not (sharded and init in ("auto", "meta")):
        model = VLA(config)
        if not sharded:
            layers = decoder_layers(model.lm)
            if parallel.activation_checkpointing:
                apply_activation_checkpointing(layers)
            if parallel.compile:
                apply_compile(layers)
        return model
    real = VLA(config) if fabric.global_rank == 0 else None
    resolved = fabric.broadcast(real.config if real is not None else None)
    with torch.device("meta"):
        model = VLA(resolved, load_weights=False)
    if real is not None:
        assert parallelize is not None
        parallelize.source = full_state_with_buffers(real)
    return model


def export_vla(model: VLA, directory: str | os.PathLike, info: dict[str, Any]) -> Path | None:
    """Write the export directory of a trained model (`VLA.save_pretrained`, float32 weights): straight
    from a model on the CPU; else from a host copy on rank 0, gathered from the shards when sharded
    (collective: call on every rank). Returns the directory on rank 0, None elsewhere."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    if not any(isinstance(p, DTensor) for p in params) and all(p.device.type == "cpu" for p in params):
        return model.save_pretrained(directory, info=info)
    state = full_state_dict(model)  # collective when sharded
    if state is None:
        return None
    with torch.device("meta"):
        host = VLA(model.config, tokenizer=model.tokenizer, load_weights=False)
    host.to_empty(device="cpu")
    host.load_state_dict(state, strict=True)  # copies, casting the bf16 vision replica back to float32
    buffers = named_buffers(model)  # non-persistent ones (rotary frequencies) are not in `state`
    with torch.no_grad():
        for name, buf in host.named_buffers():
            buf.copy_(buffers[name].detach().cpu())
    return host.save_pretrained(directory, info=info)
