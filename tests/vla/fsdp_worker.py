"""One rank of the FSDP2 tests of `parallelize_vla` (2 CPU ranks, gloo), started by
tests/vla/test_vla_parallel.py with `torch.multiprocessing.spawn`; also the single-process reference.

Every rank builds the same tiny VLA (seed 0), applies `parallelize_vla` on Lightning's default-shaped
("data_parallel", "tensor_parallel") = (1, 2) mesh, trains a few AdamW steps on its half of one global
batch and saves rank{N}.pt: local shard sizes, losses, gradient norms, the first step's full gradients,
the full parameters at the end, and the loss and gradients of the same first step with activation
checkpointing, with activation checkpointing + per-layer compile, and with bf16 mixed precision.

    python tests/vla/fsdp_worker.py OUT_DIR     # both ranks, as the test does
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

GLOBAL_BATCH = 8
STEPS = 6
LR = 3e-3


def batch(model) -> dict[str, torch.Tensor]:
    """The global batch: 8 images, instructions of different lengths, latent labels [8, 4]."""
    from vla_tiny import INSTRUCTIONS, images

    enc = model.tokenize(INSTRUCTIONS * (GLOBAL_BATCH // len(INSTRUCTIONS)))
    labels = torch.randint(0, 8, (GLOBAL_BATCH, 4), generator=torch.Generator().manual_seed(1))
    return {"images": images(GLOBAL_BATCH, seed=2), **enc, "labels": labels}


def build():
    from vla_tiny import tiny_config

    from lapa.vla import VLA

    torch.manual_seed(0)  # identical initial weights on every rank and in the reference
    return VLA(tiny_config())


def step_loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.loss(model(b["images"], b["input_ids"], b["attention_mask"]), b["labels"])


def optimizer(model) -> torch.optim.Optimizer:
    # foreach=False: the same per-tensor AdamW arithmetic on DTensor shards and on plain tensors
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.1,
                             betas=(0.9, 0.95), foreach=False)


def full(t: torch.Tensor) -> torch.Tensor:
    """A (possibly sharded DTensor) parameter or gradient as one whole tensor on every rank."""
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def trained(model) -> dict[str, torch.Tensor]:
    """Trained parameters by name (the activation-checkpoint wrapper's prefix removed, as state_dict does)."""
    return {n.replace("_checkpoint_wrapped_module.", ""): p for n, p in model.named_parameters() if p.requires_grad}


def train(model, b: dict[str, torch.Tensor], all_reduce: bool) -> dict:
    """STEPS AdamW steps on batch `b` with gradients clipped to norm 1 (the spec's recipe); losses (averaged
    over ranks), gradient norms before clipping, first-step gradients, final parameters."""
    opt = optimizer(model)
    losses, norms, grads = [], [], None
    for step in range(STEPS):
        loss = step_loss(model, b)
        loss.backward()
        if step == 0:
            grads = {n: full(p.grad) for n, p in trained(model).items()}
        norms.append(float(full(torch.nn.utils.clip_grad_norm_(list(trained(model).values()), 1.0))))
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.detach().clone()
        if all_reduce:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        losses.append(float(value))
    return {"losses": losses, "norms": norms, "grads": grads, "params": {n: full(p) for n, p in trained(model).items()}}


def reference() -> dict:
    """One process, no FSDP, the whole global batch: what the 2 ranks together must reproduce."""
    model = build()
    return train(model, batch(model), all_reduce=False)


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor

        from lapa.vla.parallelize import ParallelConfig, parallelize_vla

        # Lightning's default for 1 node x 2 devices: data_parallel = 1, tensor_parallel = 2
        mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("data_parallel", "tensor_parallel"))
        model = build()
        b = batch(model)
        half = GLOBAL_BATCH // world
        local = {k: v[rank * half:(rank + 1) * half] for k, v in b.items()}  # this rank's samples
        vision_before = {n: p.detach().clone() for n, p in model.vision.named_parameters()}
        parallelize_vla(model, mesh, ParallelConfig())

        def local_numel(module) -> int:
            return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())

        out = {
            "lm_local": local_numel(model.lm),
            "lm_total": sum(p.numel() for p in model.lm.parameters()),
            "vision_local": local_numel(model.vision),
            "vision_dtensor": any(isinstance(p, DTensor) for p in model.vision.parameters()),
            "vision_same": all(torch.equal(p, vision_before[n]) for n, p in model.vision.named_parameters()),
            "trained_dtensor": all(isinstance(p, DTensor) for p in trained(model).values()),
        }
        out.update(train(model, local, all_reduce=True))
        out["vision_same_after"] = all(torch.equal(p, vision_before[n]) for n, p in model.vision.named_parameters())

        # The same first step with activation checkpointing, with AC + per-layer compile (aot_eager: dynamo
        # and AOT autograd as on a GPU, without inductor's C++ build) and with bf16 mixed precision.
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

        import lapa.vla.parallelize as par

        par.apply_compile = partial(par.apply_compile, backend="aot_eager")
        variants = {"ac": ParallelConfig(activation_checkpointing=True),
                    "ac_compile": ParallelConfig(activation_checkpointing=True, compile=True),
                    "bf16": ParallelConfig(mixed_precision="bf16")}
        for key, cfg in variants.items():
            other = parallelize_vla(build(), mesh, cfg)
            loss = step_loss(other, local)
            loss.backward()
            value = loss.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
            out[key] = {"loss": float(value), "grads": {n: full(p.grad) for n, p in trained(other).items()},
                        "wrappers": sum(isinstance(m, CheckpointWrapper) for m in other.lm.modules()),
                        "compiled": sum(getattr(m, "_compiled_call_impl", None) is not None
                                        for m in other.lm.modules()),
                        "state_keys": sorted(other.state_dict()),
                        "vision_dtypes": sorted({str(p.dtype) for p in other.vision.parameters()}),
                        "grad_dtypes": sorted({str(p.grad.dtype) for p in trained(other).values()})}
        out["state_keys"] = sorted(model.state_dict())
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(run, args=(2, str(out / "dist_init"), str(out)), nprocs=2, join=True)
