"""Config machinery: schemas validate themselves and checkpoints can store the resolved config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lapa.config import ClusterConfig, ConfigError, compose, to_dict, to_schema, to_yaml


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


def test_unknown_keys_and_wrong_types_are_config_errors():
    with pytest.raises(ConfigError, match="num_nodez"):
        to_schema({"num_nodez": 1}, ClusterConfig)
    with pytest.raises(ConfigError, match="num_nodes"):
        to_schema({"num_nodes": "many"}, ClusterConfig)


def test_resolved_config_round_trips_through_yaml():
    cfg = to_schema({"devices": 2, "slurm": {"qos": "mcml"}}, ClusterConfig)
    again = to_schema(OmegaConf.create(to_yaml(cfg)), ClusterConfig)
    assert again == cfg and to_dict(cfg)["slurm"]["qos"] == "mcml"


def test_compose_applies_overrides():
    cfg = compose("ingest", ["input=a", "output=b"])
    assert (cfg.input, cfg.output) == ("a", "b")
