"""LAQ checkpoints: our own file format and `lapa train-laq`'s Lightning checkpoints.

Ours: `torch.save({"format": "lapa-laq", "version": 1, "config": <LAQConfig dict>, "state_dict": ...})`,
written atomically. Lightning: `state_dict` keys prefixed `model.` and `hyper_parameters["model"]` = the
LAQConfig dict. Either way the model is rebuilt from the stored config, loaded strictly and returned in
eval mode.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lapa.config import ConfigError, require, to_dict
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


def _torch_load(path: str | os.PathLike, map_location: Any, mmap: bool = False) -> Any:
    """`torch.load` of a checkpoint file, with a plain error for a path that is none (missing, a folder,
    a tar shard, not a torch file): never torch's advice to unpickle an unknown file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'is a folder' if path.is_dir() else 'does not exist'}, not a "
                                "checkpoint file")
    is_zip = zipfile.is_zipfile(path)  # what torch.save writes
    if not is_zip and tarfile.is_tarfile(path):
        raise ValueError(f"{path}: a tar archive (shards?), not a LAQ checkpoint (laq_final.pt or a .ckpt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError:
        if not is_zip:
            raise ValueError(f"{path}: not a torch checkpoint (laq_final.pt or a .ckpt)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0][:120]})") from None
    # A torch archive with pickled objects beyond tensors and containers: a Lightning checkpoint of an
    # older lapa may pickle config objects (DictConfig, dataclasses) in hyper_parameters.
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


def read_config(path: str | os.PathLike) -> LAQConfig:
    """The model config stored in a checkpoint (the weights are memory-mapped, not read)."""
    return _config_and_state(_torch_load(path, "cpu", mmap=True), str(path))[0]


def check_checkpoint(key: str, path: str, image_size: int | None = None,
                     image_size_key: str = "image_size") -> LAQConfig:
    """A command's checkpoint input: a readable LAQ checkpoint whose model takes `image_size` pixels (None:
    any); `ConfigError` naming the key otherwise. Returns the stored model config."""
    try:
        cfg = read_config(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}={path}: {str(err).removeprefix(str(path) + ': ')}") from None
    require(image_size in (None, cfg.image_size), image_size_key, image_size,
            f"the model in {key}={path} takes {cfg.image_size}-px frames; leave {image_size_key} unset "
            f"(null: the model's size) or set {cfg.image_size}")
    return cfg


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> LAQ:
    """Read our checkpoint or a `lapa train-laq` Lightning checkpoint; returns the LAQ in eval mode."""
    source = str(path)
    cfg, state = _config_and_state(_torch_load(path, map_location), source)
    model = LAQ(cfg)
    load_state_dict_strict(model, state, source)
    return model.eval()


def _config_and_state(ckpt: Any, source: str) -> tuple[LAQConfig, Mapping[str, Tensor]]:
    """(model config, model weights) of a loaded checkpoint of either kind."""
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
    return cfg, state
