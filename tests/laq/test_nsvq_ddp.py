"""Under DDP (2 CPU ranks, gloo) the codebook stays identical on every rank through dead-code
replacement, although each rank sees different data and draws different random numbers."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from lapa.laq import LAQ, LAQConfig

        torch.manual_seed(0)  # identical initial weights on both ranks
        cfg = LAQConfig(image_size=32, patch_size=4, dim=32, spatial_depth=1, temporal_depth=1,
                        decoder_depth=1, heads=2, dim_head=16, quant_dim=4, replacement_steps=[2, 4])
        model = LAQ(cfg)
        with torch.no_grad():
            model.vq.codebooks[3] = 1e3  # a dead code on every rank
        ddp = DDP(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        torch.manual_seed(100 + rank)  # different data and noise (and replacement draws) per rank
        usage_after_1 = None
        for step in range(4):
            frames = torch.rand(2 + rank, 3, 2, 32, 32)  # different batch sizes too
            out = ddp(frames)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            if step == 0:
                usage_after_1 = model.vq.codebooks_used.clone()
        torch.save({"codebooks": model.vq.codebooks.detach().clone(), "step": int(model.vq.step),
                    "usage_after_1": usage_after_1, "codebooks_used": model.vq.codebooks_used.clone()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_codebook_identical_across_ranks_after_replacement(tmp_path):
    init_file = tmp_path / "dist_init"
    mp.spawn(_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["step"] == r1["step"] == 4
    assert torch.equal(r0["usage_after_1"], r1["usage_after_1"])  # all-reduced usage counts
    assert int(r0["usage_after_1"].max()) <= 2  # a code counts at most once per rank per step
    assert torch.equal(r0["codebooks"], r1["codebooks"])
    assert float(r0["codebooks"][3].abs().max()) < 100  # the dead code was replaced
    assert int(r0["codebooks_used"].sum()) == 0  # counters reset at step 4


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
