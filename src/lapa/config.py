"""Configuration machinery shared by every command.

Every command has a top-level YAML in `lapa/conf` (shipped in the package) composed with Hydra's compose
API, then merged onto a typed dataclass schema. OmegaConf checks types and unknown keys; each dataclass
checks its values in `__post_init__` and raises `ConfigError` naming the key and the value. So an
impossible config fails at start, never hours into a run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """An impossible configuration value; the message names the key and the value."""


def require(condition: bool, key: str, value: Any, expectation: str) -> None:
    """Raise `ConfigError("key=value: expectation")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r}: {expectation}")


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `lapa/conf/<config_name>.yaml` with Hydra overrides (`key=value`, `group=option`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lapa.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def to_schema(cfg: DictConfig | dict, schema: type[T]) -> T:
    """Merge `cfg` onto the dataclass `schema` and return a validated instance.

    Unknown keys and wrong types raise `ConfigError` naming the key; value checks run in the
    dataclasses' `__post_init__`.
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        # OmegaConf's messages carry "full_key: ..." lines; keep them, drop the stack trace noise.
        raise ConfigError(str(err).strip()) from None


def load(config_name: str, schema: type[T], overrides: list[str] | None = None) -> T:
    """`compose` then `to_schema`: the validated config of one command."""
    return to_schema(compose(config_name, overrides), schema)


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-serialisable dict of a (nested) config dataclass: stored inside checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
