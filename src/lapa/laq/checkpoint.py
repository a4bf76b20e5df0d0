"""LAQ checkpoints: our own file format and `lapa train-laq`'s Lightning checkpoints.

Ours: `torch.save({"format": "lapa-laq", "version": 1, "config": <LAQConfig dict>, "state_dict": ...})`,
written atomically. Lightning: `state_dict` keys prefixed `model.` and `hyper_parameters["model"]` = the
LAQConfig dict. Either way the model is rebuilt from the stored config, loaded strictly and returned in
eval mode.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lapa.config import to_dict
from lapa.io import atomic_path
from lapa.laq.model import LAQ, LAQConfig

FORMAT = "lapa-laq"
VERSION = 1


def save_model(model: LAQ, path: str | os.PathLike) -> None:
    """Write `model` (config + weights + NSVQ bookkeeping) to `path` atomically."""
    payload = {"format": FORMAT, "version": VERSION, "config": to_dict(model.cfg),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _torch_load(path: str | os.PathLike, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may pickle config objects (DictConfig, dataclasses) in hyper_parameters;
        # they are our own training outputs, so the full unpickler is acceptable here.
        return torch.load(path, map_location=map_location, weights_only=False)


def config_from_dict(raw: Mapping[str, Any], source: str) -> LAQConfig:
    """An `LAQConfig` from a stored dict; unknown keys are an error naming them."""
    raw = to_dict(raw) if not isinstance(raw, dict) else dict(raw)
    known = set(LAQConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: model config has unknown keys {unknown}")
    return LAQConfig(**raw)


def load_state_dict_strict(model: LAQ, state_dict: Mapping[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists missing/unexpected/mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k}: {tuple(state_dict[k].shape)} != expected {tuple(v.shape)}"
                   for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape)
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong:
        problems.append(f"shape mismatches {wrong}")
    if problems:
        raise ValueError(f"{source}: state dict does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> LAQ:
    """Read our checkpoint or a `lapa train-laq` Lightning checkpoint; returns the LAQ in eval mode."""
    source = str(path)
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{source}: not an LAQ checkpoint (a {type(ckpt).__name__})")
    if ckpt.get("format") == FORMAT:
        if ckpt.get("version") != VERSION:
            raise ValueError(f"{source}: unsupported lapa-laq checkpoint version {ckpt.get('version')}")
        cfg, state = config_from_dict(ckpt["config"], source), ckpt["state_dict"]
    elif "state_dict" in ckpt and "model" in (ckpt.get("hyper_parameters") or {}):
        cfg = config_from_dict(ckpt["hyper_parameters"]["model"], source)
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        if not state:
            raise ValueError(f"{source}: Lightning checkpoint has no 'model.' weights")
    else:
        raise ValueError(f"{source}: neither a lapa-laq checkpoint nor a Lightning checkpoint of "
                         "`lapa train-laq`; a reference-layout state dict must first be converted "
                         "with `lapa convert-laq SRC DST`")
    model = LAQ(cfg)
    load_state_dict_strict(model, state, source)
    return model.eval()
