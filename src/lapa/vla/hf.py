"""Small helpers around HF transformers shared by the backbones and the language model."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Keys of a `PretrainedConfig.to_dict()` that describe the file, not the model: never applied as overrides.
METADATA = frozenset({"model_type", "architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype"})


def apply_overrides(hf_config, overrides: dict[str, Any]):
    """Set `overrides` (a few keys, or a whole resolved config dict) on a loaded HF config."""
    for key, value in overrides.items():
        if key not in METADATA:
            setattr(hf_config, key, value)
    return hf_config


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading a vision tower out of a full SigLIP checkpoint, or without the blocks after the feature
    layer, makes transformers report every unused weight; that is expected here, so hide it."""
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
