"""Policies: the interface every consumer of actions relies on and the registry of policies by name.

- `base`: the `Policy` protocol and the registry (`register`, `register_loader`, `get_policy`,
  `registered`); imports nothing else of lapa, so the simulator, the server and evaluation can all use it.
- `vla_policy`: `LAPAPolicy`, a Stage 3 export as a policy. Its loader is registered here for the export
  kind "lapa-vla" and imports the VLA only when an export is loaded (the registry stays light to import).
"""

from typing import Any

from lapa.policy.base import (
    Policy,
    UnknownPolicyError,
    export_kind,
    get_policy,
    register,
    register_loader,
    registered,
    registered_kinds,
)

VLA_EXPORT_KIND = "lapa-vla"  # `lapa.vla.export.KIND` (tests/policy checks they agree)


def _load_vla_policy(directory: str, **kwargs: Any) -> Policy:
    from lapa.policy.vla_policy import load_policy

    return load_policy(directory, **kwargs)


register_loader(VLA_EXPORT_KIND, _load_vla_policy)

__all__ = ["VLA_EXPORT_KIND", "Policy", "UnknownPolicyError", "export_kind", "get_policy", "register",
           "register_loader", "registered", "registered_kinds"]
