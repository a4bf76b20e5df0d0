"""Policies: the interface every consumer of actions relies on and the registry of policies by name.

- `base`: the `Policy` protocol and the registry (`register`, `register_loader`, `get_policy`,
  `registered`); imports nothing else of lapa, so the simulator, the server and evaluation can all use it.
"""

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

__all__ = ["Policy", "UnknownPolicyError", "export_kind", "get_policy", "register", "register_loader",
           "registered", "registered_kinds"]
