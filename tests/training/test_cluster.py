"""`lapa.training.cluster`: presets, validation, the distributed environment, devices, precision and
the DDP strategy."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lapa.config import ConfigError, to_schema
from lapa.training.cluster import (
    ClusterConfig,
    DistEnv,
    apply_precision,
    dist_env,
    make_strategy,
    resolve_device,
    valid_device,
)

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cluster_presets_compose_and_validate():
    from importlib.resources import files

    conf_dir = files("lapa") / "conf" / "cluster"
    names = sorted(p.name for p in conf_dir.iterdir() if p.name.endswith(".yaml"))
    assert {"local_dev.yaml", "lrz_h100.yaml"} <= set(names)
    h100 = to_schema(OmegaConf.load(str(conf_dir / "lrz_h100.yaml")), ClusterConfig)
    assert (h100.devices, h100.precision, h100.slurm.partition) == (4, "bf16-mixed", "mcml-hgx-h100-94x4")
    local = to_schema(OmegaConf.load(str(conf_dir / "local_dev.yaml")), ClusterConfig)
    assert local.resolved_precision() in {"32-true", "bf16-mixed"}


@pytest.mark.parametrize("override, key", [
    ({"num_nodes": 0}, "cluster.num_nodes=0"),
    ({"devices": -1}, "cluster.devices=-1"),
    ({"precision": "fp8"}, "cluster.precision='fp8'"),
    ({"strategy": "horovod"}, "cluster.strategy='horovod'"),
])
def test_impossible_cluster_values_name_key_and_value(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("'", ".")):
        to_schema(override, ClusterConfig)


def test_dist_env_reads_torchrun_variables(no_launcher):
    no_launcher.setenv("RANK", "5")
    no_launcher.setenv("WORLD_SIZE", "8")
    no_launcher.setenv("LOCAL_RANK", "1")
    no_launcher.setenv("SLURM_PROCID", "0")  # torchrun inside a Slurm allocation: torchrun's own win
    assert dist_env() == DistEnv(rank=5, world_size=8, local_rank=1)


def test_dist_env_reads_slurm_variables(no_launcher):
    no_launcher.setenv("SLURM_PROCID", "6")
    no_launcher.setenv("SLURM_NTASKS", "16")
    no_launcher.setenv("SLURM_LOCALID", "2")
    assert dist_env() == DistEnv(rank=6, world_size=16, local_rank=2)


def test_dist_env_without_a_launcher_is_one_process(no_launcher):
    no_launcher.setenv("RANK", "not-a-number")  # ignored, never a crash
    assert dist_env() == DistEnv(rank=0, world_size=1, local_rank=0)


def test_devices(no_launcher):
    assert not torch.cuda.is_available()  # the test machines are CPU-only
    no_launcher.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert [valid_device(n) for n in ("auto", "cpu", "cuda", "cuda:0", "cuda:x", "gpu", "")] == [
        True, True, True, True, False, False, False]


def test_precision_resolution_and_its_side_effect():
    assert ClusterConfig(accelerator="cpu").resolved_precision() == "32-true"
    assert ClusterConfig(accelerator="auto").resolved_precision() == "32-true"  # no CUDA here
    assert ClusterConfig(accelerator="gpu").resolved_precision() == "bf16-mixed"
    assert ClusterConfig(accelerator="gpu", precision="16-mixed").resolved_precision() == "16-mixed"

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert apply_precision(ClusterConfig(accelerator="cpu")) == "32-true"
        assert torch.get_float32_matmul_precision() == "highest"  # full fp32 stays full fp32
        assert apply_precision(ClusterConfig(accelerator="cpu", precision="bf16-mixed")) == "bf16-mixed"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_make_strategy_for_trainer_and_fabric():
    from lightning.fabric.strategies import DDPStrategy as FabricDDP
    from lightning.pytorch.strategies import DDPStrategy as TrainerDDP

    ddp = ClusterConfig(strategy="ddp", backend="gloo")
    trainer_ddp, fabric_ddp = make_strategy(ddp), make_strategy(ddp, fabric=True)
    assert isinstance(trainer_ddp, TrainerDDP) and trainer_ddp._process_group_backend == "gloo"
    assert isinstance(fabric_ddp, FabricDDP) and fabric_ddp._process_group_backend == "gloo"
    assert make_strategy(ClusterConfig(strategy="auto")) == "auto"
    assert make_strategy(ClusterConfig(strategy="fsdp"), fabric=True) == "fsdp"
