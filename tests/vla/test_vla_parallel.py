"""`parallelize_vla` (FSDP2) on CPU with gloo: 2 ranks hold half of the LM each and a whole vision tower,
train exactly as one rank on the global batch, and activation checkpointing, per-layer compile and bf16
mixed precision keep the step; Fabric's ModelParallelStrategy under a (fake) Slurm job.

Tolerances, measured on the development machine (fp32, tiny model, 6 AdamW steps at lr 3e-3 with
gradients clipped to norm 1): two ranks vs one differ by at most 1.5e-7 in the first gradients (largest
gradient 1.6) and 1.3e-7 in the parameters after 6 steps, which is fp32 rounding of a different
summation order (each rank sums 4 samples, then the two means are averaged). The asserted bounds (1e-6
gradients, 1e-5 parameters) are ~10-100x that, and ~100x below what a real fault moves: unsynchronised
ranks or summed instead of averaged gradients change gradients by O(1) and parameters by O(lr) = 3e-3.
bf16 parameters (fp32 reduction) change the first loss by 5e-4 and the gradients by at most 1.8% (norm of
the difference over the norm, per parameter); asserted: 1e-2 and 6%.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import fsdp_worker
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from lapa.config import ConfigError
from lapa.vla.parallelize import ParallelConfig, data_parallel_mesh, decoder_layers, parallelize_vla

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the 2 FSDP ranks saved (see fsdp_worker.run)."""
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(fsdp_worker.run, args=(2, str(out / "dist_init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, no FSDP, the whole global batch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fsdp_worker.reference()
    finally:
        torch.set_num_threads(threads)


def test_each_rank_holds_half_the_lm_and_a_whole_vision_tower(ranks):
    vision = sum(p.numel() for p in fsdp_worker.build().vision.parameters())
    total = ranks[0]["lm_total"]
    assert ranks[0]["lm_local"] + ranks[1]["lm_local"] == total
    for r in ranks:
        assert 0.45 * total <= r["lm_local"] <= 0.55 * total  # dim-0 shards: about half of every tensor
        assert r["vision_local"] == vision and not r["vision_dtensor"]  # replicated, not sharded
        assert r["trained_dtensor"]  # LM, projector, ACT queries, head: all sharded
        assert r["vision_same"] and r["vision_same_after"]  # frozen: bit-identical after training


def test_two_ranks_train_as_one_rank_on_the_global_batch(ranks, reference):
    r0, r1 = ranks
    assert r0["losses"][-1] < 0.7 * r0["losses"][0]  # it learns
    assert_close(r0["losses"], reference["losses"], rtol=0, atol=1e-5)
    assert_close(r0["norms"], reference["norms"], rtol=1e-5, atol=0)  # clip_grad_norm_ over DTensor shards
    assert min(reference["norms"]) > 1.0  # so clipping was active in every step
    assert_close(r0["grads"], reference["grads"], rtol=0, atol=1e-6)
    assert_close(r0["params"], reference["params"], rtol=0, atol=1e-5)
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name  # one model, gathered identically on both ranks


@pytest.mark.parametrize("variant", ["ac", "ac_compile"])
def test_activation_checkpointing_and_compile_keep_loss_and_gradients(ranks, variant):
    r0 = ranks[0]
    v = r0[variant]
    assert v["wrappers"] == 2  # both decoder layers checkpointed
    assert v["compiled"] == (2 if variant == "ac_compile" else 0)
    assert v["state_keys"] == r0["state_keys"]  # checkpoint keys unchanged by the wrapper
    assert_close(v["loss"], r0["losses"][0], rtol=0, atol=1e-6)
    assert_close(v["grads"], r0["grads"], rtol=0, atol=1e-6)


def test_bf16_mixed_precision(ranks):
    r0 = ranks[0]
    v = r0["bf16"]
    assert v["vision_dtypes"] == ["torch.bfloat16"]  # the replicated frozen tower is cast
    assert v["grad_dtypes"] == ["torch.float32"]  # fp32 reduction into fp32 shards
    assert abs(v["loss"] - r0["losses"][0]) < 1e-2
    for name, g in r0["grads"].items():
        assert float((v["grads"][name] - g).norm() / g.norm()) < 0.06, name


def test_one_rank_mesh_and_configuration(tmp_path, reference, one_thread):
    from torch.distributed.device_mesh import init_device_mesh

    with pytest.raises(ConfigError, match="mixed_precision"):
        ParallelConfig(mixed_precision="fp8")
    assert ParallelConfig().param_dtype("cuda") == torch.bfloat16 and ParallelConfig().param_dtype("cpu") is None
    assert ParallelConfig(mixed_precision="none").param_dtype("cuda") is None
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="mesh"):
            data_parallel_mesh(init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "cp")))
        model = fsdp_worker.build()
        assert [type(getattr(p, n)).__name__ for p, n in decoder_layers(model.lm)] == ["LlamaDecoderLayer"] * 2
        mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        parallelize_vla(model, mesh, ParallelConfig())
        fsdp_worker.step_loss(model, fsdp_worker.batch(model)).backward()
        grads = {n: fsdp_worker.full(p.grad) for n, p in fsdp_worker.trained(model).items()}
        assert_close(grads, reference["grads"], rtol=0, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_other_decoder_only_lms_have_their_layers_found():
    from transformers import AutoConfig, AutoModel

    gpt2 = AutoModel.from_config(AutoConfig.for_model("gpt2", n_embd=16, n_layer=3, n_head=2, n_positions=32))
    assert [type(getattr(p, n)).__name__ for p, n in decoder_layers(gpt2)] == ["GPT2Block"] * 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fabric_and_trainer_model_parallel_strategy_under_slurm(tmp_path):
    """Two tasks of one fake node, as `srun` starts them from slurm/train.sbatch: Fabric must take rank,
    world size and rendezvous from the SLURM_* variables (no torchrun variables are set), shard the VLA
    over both (mesh data_parallel=2) and all-reduce across them; then the Trainer does the same."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                                                         "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    base.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_NODEID="0",
                SLURM_JOB_NODELIST="node001", SLURM_JOB_ID="123456", SLURM_JOB_NAME="lapa",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    procs = []
    for task in (1, 0):  # started in reverse: ranks must come from SLURM_PROCID, not from start order
        env = dict(base, SLURM_PROCID=str(task), SLURM_LOCALID=str(task))
        procs.append(subprocess.Popen([sys.executable, str(HERE / "slurm_fabric_smoke.py"), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    for task in (0, 1):
        r = json.loads((tmp_path / f"task{task}.json").read_text())
        assert r["environment"] == "SLURMEnvironment" and r["launcher_vars"] == []
        assert (r["global_rank"], r["local_rank"], r["node_rank"], r["world_size"]) == (task, task, 0, 2)
        assert (r["main_address"], r["main_port"]) == ("127.0.0.1", int(base["MASTER_PORT"]))
        assert r["backend"] == "gloo" and r["mesh"] == [2, 1] and r["mesh_dims"] == ["data_parallel", "tensor_parallel"]
        assert r["all_reduce_sum"] == 3.0  # (0 + 1) + (1 + 1): both tasks took part
        assert r["lm_local"] * 2 == r["lm_total"]
        # the Trainer (Stage 3): parallelize_vla in configure_model, same environment
        assert r["trainer_environment"] == "SLURMEnvironment"
        assert (r["trainer_rank"], r["trainer_world_size"], r["trainer_steps"]) == (task, 2, 2)
        assert len(r["trainer_losses"]) == 2 and r["trainer_lm_local"] * 2 == r["lm_total"]


def test_train_sbatch_hands_nodes_devices_and_rendezvous_to_srun(tmp_path):
    """slurm/train.sbatch under a fake `scontrol` and `srun`: the rendezvous is the job's first node on a
    per-job port, srun gets the allocation's CPUs, and lapa gets --nodes / --ntasks-per-node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu017\\ngpu018\\n"\n')
    (bin_dir / "srun").write_text('#!/bin/bash\n'
                                  '{ echo "$@"; echo "$MASTER_ADDR $MASTER_PORT $SRUN_CPUS_PER_TASK"; } > "$OUT"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out = tmp_path / "srun.txt"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in {"MASTER_ADDR", "MASTER_PORT"}}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", OUT=str(out), SLURM_JOB_NODELIST="gpu[017-018]",
               SLURM_JOB_ID="4242424", SLURM_NNODES="2", SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_PER_TASK="18")
    subprocess.run(["bash", str(HERE.parents[1] / "slurm" / "train.sbatch"), "train-vla", "experiment=vla_7b"],
                   env=env, check=True, cwd=tmp_path)
    command, rendezvous = out.read_text().splitlines()
    assert command == "--kill-on-bad-exit=1 lapa train-vla experiment=vla_7b cluster.num_nodes=2 cluster.devices=4"
    assert rendezvous == f"gpu017 {15000 + 4242424 % 10000} 18"
