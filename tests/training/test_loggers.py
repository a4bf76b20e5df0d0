"""`lapa.training.loggers`: the loggers of the Trainer and of Fabric, and their config check."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from lapa.config import ConfigError
from lapa.training.loggers import LOGGERS, WandbConfig, check_logger, make_logger


def _rows(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_csv_logger_writes_a_new_version_folder_per_start(tmp_path):
    for run in range(2):  # a run and its resumed continuation
        logger = make_logger("csv", tmp_path, "exp")
        logger.log_metrics({"train/loss": 1.0 + run}, step=run)
        logger.save()
    files = sorted(tmp_path.glob("logs/version_*/metrics.csv"))
    assert [f.parent.name for f in files] == ["version_0", "version_1"]
    assert [float(_rows(f)[0]["train/loss"]) for f in files] == [1.0, 2.0]


def test_fabric_flavour_logs_a_metric_to_csv(tmp_path):
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import CSVLogger

    logger = make_logger("csv", tmp_path, "exp", fabric=True)
    assert isinstance(logger, CSVLogger)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=logger)
    fabric.log_dict({"train/loss": 0.25, "lr": 1e-3}, step=3)
    logger.finalize("success")
    rows = _rows(tmp_path / "logs/version_0/metrics.csv")
    assert [(int(r["step"]), float(r["train/loss"]), float(r["lr"])) for r in rows] == [(3, 0.25, 1e-3)]


@pytest.mark.parametrize("fabric", [False, True])
def test_tensorboard_logger_writes_events(tmp_path, fabric):
    pytest.importorskip("tensorboard")
    logger = make_logger("tensorboard", tmp_path, "exp", fabric=fabric)
    logger.log_metrics({"train/loss": 0.5}, step=1)
    logger.finalize("success")
    assert list(tmp_path.glob("logs/version_0/events.out.tfevents.*"))


def test_unknown_or_missing_loggers_fail_naming_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"^logger='mlflow': must be one of csv, tensorboard, wandb"):
        make_logger("mlflow", tmp_path, "exp")
    with pytest.raises(ConfigError, match=r"^vla\.logger='nope'"):
        check_logger("nope", key="vla.logger")
    assert LOGGERS == ("csv", "tensorboard", "wandb")
    check_logger("csv")
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="needs the wandb package"):
            make_logger("wandb", tmp_path, "exp", WandbConfig(offline=True))
    assert not (tmp_path / "logs").exists()  # a refused logger created nothing
