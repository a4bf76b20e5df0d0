"""Configuration machinery shared by every command.

Every command has a top-level YAML in `lapa/conf` (shipped in the package) composed with Hydra's compose
API, then merged onto a typed dataclass schema. OmegaConf checks types and unknown keys; each dataclass
checks its values in `__post_init__` and raises `ConfigError` naming the key and the value. So an
impossible config fails at start, never hours into a run.

Every user error is a `ConfigError` with a one-line message that names the key: an unknown option of a
config group (`experiment=laq_dbg`: the valid ones are listed), an unknown key (with the nearest known
one: "did you mean data.batch_size?"), a missing required value, a bad value, and (`check_inputs`, run by
`lapa` before a command creates anything) an input path that does not exist or holds the wrong thing.
`lapa` prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """A user error in a command's config or inputs; the one-line message names the key and the value.
    `lapa` prints it and exits with status 2 (no traceback)."""


def require(condition: bool, key: str, value: Any, expectation: str) -> None:
    """Raise `ConfigError("key=value: expectation")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}={value!r}: {expectation}")


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose `lapa/conf/<config_name>.yaml` with Hydra overrides (`key=value`, `group=option`).

    An unknown option of a config group (even of an optional one, which Hydra would silently skip) and an
    unknown key raise `ConfigError` listing the valid options / naming the nearest known key."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lapa.conf", version_base="1.3"):
        _check_group_options(GlobalHydra.instance().config_loader(), overrides)

        def attempt(items: list[str]) -> DictConfig:
            return hydra_compose(config_name=config_name, overrides=items)

        try:
            return attempt(overrides)
        except HydraException as err:
            key = getattr(err.__cause__, "full_key", None)
            bad = [o for o in overrides if key and _override_key(o) == key]
            if not bad or "not in struct" not in str(err.__cause__):
                raise ConfigError(one_line(err)) from None
            try:  # the config without the offending override: where the nearest known key comes from
                known = attempt([o for o in overrides if o not in bad])
            except Exception:  # noqa: BLE001 (another override is wrong too: report this one first)
                known = None
            raise ConfigError(unknown_key_message(key, known)) from None


def _override_key(override: str) -> str:
    """The key of a `key=value` / `+key=value` / `~key` override (without a `@package`)."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _check_group_options(loader: Any, overrides: list[str]) -> None:
    """`group=option` overrides name an existing option (Hydra skips a missing one of an optional group)."""
    for override in overrides:
        if "=" not in override or override.startswith("~"):
            continue
        group, value = _override_key(override), override.split("=", 1)[1]
        if "." in group or not loader.repository.group_exists(group):
            continue
        options = loader.get_group_options(group)
        chosen = [v.strip() for v in value.strip("[]").split(",")] if value.startswith("[") else [value]
        for option in chosen:
            if option and option != "null" and option not in options:
                near = difflib.get_close_matches(option, options, n=1)
                hint = f"did you mean {group}={near[0]}? " if near else ""
                raise ConfigError(f"{group}={option}: no such {group}; {hint}valid options: {', '.join(options)}")


def one_line(err: BaseException) -> str:
    """An OmegaConf/Hydra error message on one line, without the `full_key:`/`object_type=` detail lines."""
    lines = [ln.strip() for ln in str(err).strip().splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(kept) or type(err).__name__


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a (possibly structured) config, dotted, including those without a value yet."""
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                keys += _all_keys(child, full + ".")
    return keys


def unknown_key_message(key: str, known: Any) -> str:
    """"unknown key data.batchsize; did you mean data.batch_size?" (`known`: the config it is not in)."""
    message = f"unknown key {key}"
    keys = _all_keys(known) if known is not None else []
    last = key.rsplit(".", 1)[-1]
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == last and k != key]
    near = same_name or difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
    if near:
        return f"{message}; did you mean {' or '.join(near[:3])}?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = [k.rsplit(".", 1)[-1] for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    if siblings:
        message += f"; the keys {'of ' + parent if parent else 'at the top level'} are: {', '.join(siblings)}"
    return message


def to_schema(cfg: DictConfig | dict, schema: type[T]) -> T:
    """Merge `cfg` onto the dataclass `schema` and return a validated instance.

    Unknown keys and wrong types raise `ConfigError` naming the key; value checks run in the
    dataclasses' `__post_init__`.
    """
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise ConfigError(unknown_key_message(str(err.full_key), OmegaConf.structured(schema))) from None
    except MissingMandatoryValue as err:
        key = str(err.full_key)
        doc = field_docs(schema).get(key)
        raise ConfigError(f"missing value for {key}: set {key}=..." + (f" ({doc})" if doc else "")) from None
    except OmegaConfBaseException as err:
        value = getattr(err, "value", None)
        where = f"{err.full_key}={value!r}: " if getattr(err, "full_key", None) and value is not None else ""
        raise ConfigError(where + one_line(err)) from None


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


def field_docs(schema: type, prefix: str = "") -> dict[str, str]:
    """`{dotted key: its one-line description}` of a dataclass schema and the dataclasses nested in it:
    the comment after each field in the source (`batch_size: int = 32  # per device`), else the comment
    lines right above it, "" when none."""
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        source = ""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines():
        if re.match(r"^    #", line):
            above.append(line.strip().lstrip("#").strip())
            continue
        field_line = re.match(r"^    (\w+)\s*:([^#\n]*)(?:#\s*(.+?))?\s*$", line)
        if field_line and "(" not in field_line.group(1):
            comments[field_line.group(1)] = field_line.group(3) or " ".join(above)
        above = []
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 (a forward reference that does not resolve: no nesting)
        hints = {}
    docs: dict[str, str] = {}
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        docs[key] = comments.get(f.name, "")
        if dataclasses.is_dataclass(hints.get(f.name)):
            docs.update(field_docs(hints[f.name], key + "."))
    return docs


def check_inputs(cfg: Any) -> None:
    """The checks of a command's inputs that read the disk, before the command creates anything:
    `cfg.check_inputs()` when the schema defines it (raising `ConfigError`). Not part of `to_schema`, so
    that `--cfg` and `--help` work without the files."""
    hook = getattr(cfg, "check_inputs", None)
    if callable(hook):
        hook()


def require_path(key: str, value: str | os.PathLike | None, kind: str = "file", what: str = "") -> Path:
    """`value` exists and is a `kind` ("file" | "dir"), else `ConfigError` naming the key: the check of
    an input path in `check_inputs` hooks. `what` says what the path should hold."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind={kind!r}: must be 'file' or 'dir'")
    require(bool(value), key, value, f"set {key} to {what or 'a ' + kind}")
    path = Path(os.fspath(value))  # type: ignore[arg-type]
    expected = what or ("a file" if kind == "file" else "a folder")
    require(path.exists(), key, str(value), f"does not exist (expected {expected})")
    ok = path.is_file() if kind == "file" else path.is_dir()
    require(ok, key, str(value), f"is a {'folder' if path.is_dir() else 'file'}, expected {expected}")
    return path
