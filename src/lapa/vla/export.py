"""The VLA's export directory (DESIGN.md section 9): what `from_pretrained` reads, on CPU, without
Lightning or Fabric.

    config.json          the resolved model config: every HF config dict (backbones, LM), image sizes,
                         normalisation, prompt, head. Rebuilds every submodule offline, without the
                         original HF names or paths.
    model.safetensors    all weights (`safetensors.torch.save_model`: handles tied/shared tensors)
    tokenizer files      `tokenizer.save_pretrained` (tokenizer.json, tokenizer_config.json, ...)
    info.json            {"kind": "lapa-vla", "stage", "format_version", ...} plus free-form training info
    action_stats.json    (Stage 3, written by its trainer beside these)

Written atomically: everything goes into a temporary sibling directory which is then renamed into
place (an existing export is first renamed aside, then deleted), so a reader finds either the old
export or the new one, never a half-written one.

A mixin (lerobot's pattern), so this module needs nothing from model.py: the class provides
`config_class`, `config`, `tokenizer`, `parameter_counts()` and `__init__(config, tokenizer=...,
load_weights=...)`.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from lapa.config import to_dict, to_schema
from lapa.io import atomic_dir

KIND = "lapa-vla"
FORMAT_VERSION = 1
RESERVED = ("kind", "stage", "format_version", "weights_dtype", "parameters")


def _no_init():
    """Skip random init while building a model whose weights are loaded right after (7B: minutes)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return nullcontext()
    return no_init_weights()


class ExportMixin:
    config_class: type

    def save_pretrained(self, directory: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
        """Write the export directory atomically; `info` (JSON-serialisable: training data, steps,
        metrics) goes into info.json beside the reserved keys. Returns the directory."""
        from safetensors.torch import save_model

        info = dict(info or {})
        clash = [k for k in RESERVED if k in info]
        if clash:
            raise ValueError(f"info keys {clash} are reserved for the export format")
        final = Path(directory).resolve()
        with atomic_dir(final) as tmp:
            dtypes = {str(p.dtype).removeprefix("torch.") for p in self.parameters()}  # type: ignore[attr-defined]
            weights_dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
            (tmp / "config.json").write_text(json.dumps(to_dict(self.config), indent=2) + "\n")  # type: ignore[attr-defined]
            save_model(self, str(tmp / "model.safetensors"), metadata={"format": "pt"},  # type: ignore[arg-type]
                       force_contiguous=True)
            self.tokenizer.save_pretrained(str(tmp))  # type: ignore[attr-defined]
            header = {"kind": KIND, "stage": self.config.stage, "format_version": FORMAT_VERSION,  # type: ignore[attr-defined]
                      "weights_dtype": weights_dtype,
                      "parameters": self.parameter_counts()}  # type: ignore[attr-defined]
            (tmp / "info.json").write_text(json.dumps({**header, **info}, indent=2) + "\n")
        return final

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None):
        """Rebuild the model from an export directory (offline) and load its weights; `dtype` None =
        the dtype it was saved in (float32 when it was saved with mixed dtypes). Returned in eval mode."""
        from safetensors.torch import load_model

        from lapa.vla.tokenizer import load_tokenizer

        directory = Path(directory)
        info = read_info(directory)
        config = to_schema(json.loads((directory / "config.json").read_text()), cls.config_class)
        tokenizer = load_tokenizer(directory)
        with _no_init(), torch.device(device):
            model = cls(config, tokenizer=tokenizer, load_weights=False)  # type: ignore[call-arg]
        # strict: every parameter must come from the file (none may keep the skipped random init)
        load_model(model, str(directory / "model.safetensors"), strict=True, device=str(device))
        saved = info.get("weights_dtype", "float32")
        dtype = dtype or (getattr(torch, saved) if saved != "mixed" else None)
        if dtype is not None:
            model.to(dtype=dtype)
        return model.eval()


def read_info(directory: str | os.PathLike) -> dict[str, Any]:
    """info.json of an export directory, checked to be a lapa VLA export this code can read."""
    path = Path(directory) / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a lapa VLA export (no info.json)")
    info = json.loads(path.read_text())
    if info.get("kind") != KIND:
        raise ValueError(f"{directory}: info.json kind={info.get('kind')!r}, expected {KIND!r}")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{directory}: export format_version={info['format_version']} is newer than this "
                         f"lapa reads ({FORMAT_VERSION}); upgrade lapa")
    return info


