"""The policy interface and the registry of policies by name (DESIGN.md sections 4 and 9).

Interface (docs/contracts.md, "Policies"):

    policy.predict_action(image: uint8 [H, W, 3], instruction: str) -> float32 [7]
    policy.reset(**kwargs) -> None        optional; called before each episode

Callers pass whatever they know to `reset` (the simulator: `world=`, `task=`, `seed=`); a policy takes
what it needs and ignores the rest (accept `**kwargs`). A learned policy needs only the image.

Registry: `get_policy(name, **kwargs)` builds a policy by its registered name (`register(name, factory)`;
the simulator registers `oracle` and `random` when `lapa.sim` is imported). A name that is not registered
but is a directory is an exported policy (DESIGN.md section 9): its `info.json` or `config.json` names
its kind (`"kind"`, else `"format"`), and the loader registered for that kind
(`register_loader(kind, loader)`) builds it from the directory. This is how learned policies reach the
simulator and the server without either importing them, so this module imports nothing else of lapa.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Files of an export directory that may name its kind, in the order they are read.
EXPORT_FILES = ("info.json", "config.json")
KIND_KEYS = ("kind", "format")


@runtime_checkable
class Policy(Protocol):
    """Anything that maps an observation and an instruction to one action."""

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """image uint8 `[H, W, 3]`, instruction text -> action float32 `[7]`
        (`[dx, dy, dz, droll, dpitch, dyaw, gripper]`)."""
        ...


PolicyFactory = Callable[..., Policy]  # factory(**kwargs) -> Policy
PolicyLoader = Callable[..., Policy]  # loader(directory: str, **kwargs) -> Policy


class UnknownPolicyError(LookupError):
    """A policy name that is neither registered nor a directory a registered loader claims."""


_FACTORIES: dict[str, PolicyFactory] = {}
_LOADERS: dict[str, PolicyLoader] = {}


def register(name: str, factory: PolicyFactory) -> None:
    """Make `get_policy(name, **kwargs)` return `factory(**kwargs)`. A name is registered once: a second
    registration is an error (two modules claiming one name would otherwise shadow each other silently)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"policy name must be a non-empty string, got {name!r}")
    if name in _FACTORIES:
        raise ValueError(f"policy {name!r} is already registered (by {_describe(_FACTORIES[name])})")
    _FACTORIES[name] = factory


def register_loader(kind: str, loader: PolicyLoader) -> None:
    """Make `get_policy(DIR, **kwargs)` return `loader(DIR, **kwargs)` for export directories of `kind`
    (the `kind` or `format` field of their info.json / config.json). Registered once, like names."""
    if not kind or not isinstance(kind, str):
        raise ValueError(f"export kind must be a non-empty string, got {kind!r}")
    if kind in _LOADERS:
        raise ValueError(f"a loader for export kind {kind!r} is already registered (by {_describe(_LOADERS[kind])})")
    _LOADERS[kind] = loader


def registered() -> list[str]:
    """The registered policy names, sorted."""
    return sorted(_FACTORIES)


def registered_kinds() -> list[str]:
    """The export kinds a loader is registered for, sorted."""
    return sorted(_LOADERS)


def export_kind(directory: str | Path) -> str | None:
    """The kind an export directory declares (info.json first, then config.json), or None."""
    for name in EXPORT_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UnknownPolicyError(f"policy={str(directory)!r}: cannot read {name}: {err}") from err
        for key in KIND_KEYS:
            if isinstance(data, dict) and isinstance(data.get(key), str) and data[key]:
                return data[key]
    return None


def get_policy(name: str, **kwargs: Any) -> Policy:
    """The policy called `name`: a registered name, else an export directory read by its kind's loader.

    kwargs go to the factory or loader; built-in factories ignore those they do not know, so a caller
    can pass one set of options to any policy. Raises UnknownPolicyError with what is registered.
    """
    if name in _FACTORIES:
        return _FACTORIES[name](**kwargs)
    path = Path(name)
    if path.is_dir():
        kind = export_kind(path)
        if kind is None:
            fields = " or ".join(repr(k) for k in KIND_KEYS)
            raise UnknownPolicyError(
                f"policy={name!r}: a directory, but neither of {', '.join(EXPORT_FILES)} names its kind (a "
                f"{fields} field); registered kinds: {_listing(registered_kinds())}")
        if kind not in _LOADERS:
            raise UnknownPolicyError(
                f"policy={name!r}: no loader is registered for export kind {kind!r}; registered kinds: "
                f"{_listing(registered_kinds())}")
        return _LOADERS[kind](str(path), **kwargs)
    raise UnknownPolicyError(
        f"policy={name!r}: not a registered policy ({_listing(registered())}) nor an export directory")


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _describe(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
