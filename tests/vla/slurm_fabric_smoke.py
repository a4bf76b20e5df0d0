"""One task of a fake Slurm job (started by tests/vla/test_vla_parallel.py with SLURM_* variables, as
`srun` would): Fabric on CPU with `ModelParallelStrategy(parallelize_fn=partial(parallelize_vla, cfg=...))`
with every rank data-parallel (as `lapa.training.fabric.make_fabric` builds it), one training step of the
tiny VLA, an all-reduce; then the Trainer's ModelParallelStrategy (Stage 3's way: the Trainer's strategy
takes no parallelize_fn, the LightningModule calls `parallelize_vla` in `configure_model`) for two steps
in the same process group. Writes what this task saw.

    python slurm_fabric_smoke.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch


def main(out: Path) -> None:
    torch.set_num_threads(1)
    launcher_vars = sorted(k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")
                           if k in os.environ)
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor
    from vla_tiny import INSTRUCTIONS, images, tiny_config

    from lapa.vla import VLA
    from lapa.vla.parallelize import ParallelConfig, parallelize_vla

    devices, nodes = int(os.environ["SLURM_NTASKS_PER_NODE"]), int(os.environ["SLURM_NNODES"])
    # The world size is passed only to the mesh; Fabric takes rank and world from the environment.
    strategy = ModelParallelStrategy(parallelize_fn=partial(parallelize_vla, cfg=ParallelConfig()),
                                     data_parallel_size=devices * nodes, tensor_parallel_size=1)
    fabric = Fabric(accelerator="cpu", devices=devices, num_nodes=nodes, strategy=strategy)
    fabric.launch()
    env = fabric.strategy.cluster_environment

    torch.manual_seed(0)
    model = VLA(tiny_config())
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
    torch.manual_seed(fabric.global_rank)  # different data per rank
    enc = model.tokenize(INSTRUCTIONS[:2])
    logits = model(images(2, seed=fabric.global_rank), enc["input_ids"], enc["attention_mask"])
    loss = model.loss(logits, torch.randint(0, 8, (2, 4)))
    fabric.backward(loss)
    opt.step()
    total = fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum")
    lm_local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.lm.parameters())
    mesh = fabric.strategy.device_mesh
    result = {
        "environment": type(env).__name__, "launcher_vars": launcher_vars,
        "global_rank": fabric.global_rank, "world_size": fabric.world_size, "local_rank": fabric.local_rank,
        "node_rank": fabric.node_rank, "main_address": env.main_address, "main_port": env.main_port,
        "backend": torch.distributed.get_backend(), "mesh": list(mesh.shape), "mesh_dims": list(mesh.mesh_dim_names),
        "all_reduce_sum": float(total), "loss": float(loss.detach()),
        "lm_local": lm_local, "lm_total": sum(p.numel() for p in model.lm.parameters()),
    }
    result.update(trainer_run())
    (out / f"task{os.environ['SLURM_PROCID']}.json").write_text(json.dumps(result))


def trainer_run() -> dict:
    """Two steps of the Lightning Trainer with `parallelize_vla` applied in `configure_model`."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor
    from vla_tiny import INSTRUCTIONS, images, tiny_config

    from lapa.vla import VLA
    from lapa.vla.parallelize import ParallelConfig, parallelize_vla

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.vla, self.losses = VLA(tiny_config()), []

        def configure_model(self) -> None:
            parallelize_vla(self.vla, self.device_mesh, ParallelConfig())

        def training_step(self, batch, _):
            loss = self.vla.loss(self.vla(batch["images"], batch["input_ids"], batch["attention_mask"]),
                                 batch["labels"])
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    module = Module()
    rank = int(os.environ["SLURM_PROCID"])
    batches = [{"images": images(2, seed=10 * rank + i), **module.vla.tokenize(INSTRUCTIONS[:2]),
                "labels": torch.randint(0, 8, (2, 4))} for i in range(2)]
    devices, nodes = int(os.environ["SLURM_NTASKS_PER_NODE"]), int(os.environ["SLURM_NNODES"])
    trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, max_steps=2, logger=False,
                        strategy=ModelParallelStrategy(data_parallel_size=devices * nodes, tensor_parallel_size=1),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    lm = module.vla.lm
    return {"trainer_environment": type(trainer.strategy.cluster_environment).__name__,
            "trainer_rank": trainer.global_rank, "trainer_world_size": trainer.world_size,
            "trainer_steps": trainer.global_step, "trainer_losses": module.losses,
            "trainer_lm_local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in lm.parameters())}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]))
