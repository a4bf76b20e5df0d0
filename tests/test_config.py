"""Config machinery: schemas validate themselves and checkpoints can store the resolved config.

`ClusterConfig` serves as the example schema; its own presets and values: tests/training/test_cluster.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from lapa.config import ConfigError, compose, to_dict, to_schema, to_yaml
from lapa.training.cluster import ClusterConfig


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
