"""Writing and finding WebDataset tar shards, and encoding/decoding their parts.

WebDataset groups the files of one sample by the name before the first dot, so the parts of a sample use
dotted suffixes (`KEY.t.jpg`). The parts of each format (DESIGN.md section 5) are defined by its module:
`frame_pairs`, `latent_labelled`, `robot_steps`. Reading shards on the training path: `tar_reader`.

Every shard is written under a temporary name and renamed when complete, so a killed job never leaves a
partial shard under a final name, and a finished shard can be trusted by a resumed job.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lapa.config import ConfigError
from lapa.io import atomic_path


def shard_name(prefix: str, index: int) -> str:
    """`{prefix}-{index:06d}.tar`: sortable, and the index says where a resumed job continues."""
    return f"{prefix}-{index:06d}.tar"


def encode_value(suffix: str, value: Any) -> bytes:
    """Bytes of one part of a sample: bytes as they are, str as UTF-8, dict/list as JSON, arrays as .npy."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if suffix.endswith("npy"):
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    if suffix.endswith("json"):
        return json.dumps(value).encode("utf-8")
    raise TypeError(f"cannot encode a {type(value).__name__} as .{suffix}")


def decode_npy(data: bytes) -> np.ndarray:
    """Inverse of `encode_value` for `.npy` parts (no pickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]], mtime: float = 0.0) -> int:
    """Write `samples` (dicts with `__key__` and suffix -> value) to a tar shard atomically.

    Members get a fixed modification time (`mtime`), so the same samples give a byte-identical shard:
    deterministic jobs (ingest, label) can be checked and resumed by content. Returns the number of
    samples written.
    """
    import webdataset as wds

    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False, mtime=mtime)
            for sample in samples:
                writer.write({k: v if k.startswith("__") else encode_value(k, v) for k, v in sample.items()})
                count += 1
            writer.close()
    return count


class ShardWriter:
    """Rolling writer: starts a new shard every `max_count` samples or `max_bytes` bytes.

    Each shard is a temporary file until it is closed and renamed, so the shards under final names are
    always complete. `written` lists the final paths in order.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30, start_index: int = 0) -> None:
        if max_count < 1:
            raise ValueError(f"max_count={max_count}: must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.index = start_index
        self.written: list[Path] = []
        self._buffer: list[dict[str, Any]] = []
        self._bytes = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        encoded = {k: v if k.startswith("__") else encode_value(k, v) for k, v in sample.items()}
        size = sum(len(v) for k, v in encoded.items() if not k.startswith("__"))
        if self._buffer and (len(self._buffer) >= self.max_count or self._bytes + size > self.max_bytes):
            self.flush()
        self._buffer.append(encoded)
        self._bytes += size

    def flush(self) -> None:
        """Write the buffered samples as one complete shard."""
        if not self._buffer:
            return
        path = self.directory / shard_name(self.prefix, self.index)
        write_shard(path, self._buffer)
        self.written.append(path)
        self.index += 1
        self._buffer, self._bytes = [], 0

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()  # on error the unfinished buffer is dropped: never a partial shard


def list_shards(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard paths from a directory, a glob, a brace pattern (`a-{000000..000009}.tar`) or a list.

    Temporary files (`*.tmp`) are never returned. Raises FileNotFoundError when nothing matches.
    """
    if isinstance(spec, (str, os.PathLike)):
        specs = [os.fspath(spec)]
    else:
        specs = [os.fspath(s) for s in spec]
    paths: list[str] = []
    for item in specs:
        if os.path.isdir(item):
            paths += sorted(glob.glob(os.path.join(item, "*.tar")))
        elif any(ch in item for ch in "*?["):
            paths += sorted(glob.glob(item))
        elif "{" in item:
            import braceexpand

            paths += [p for p in braceexpand.braceexpand(item) if os.path.exists(p) or "://" in p]
        elif os.path.exists(item) or "://" in item:
            paths.append(item)
    paths = [p for p in paths if not p.endswith(".tmp")]
    if not paths:
        raise FileNotFoundError(f"no shards found for {spec!r}")
    return paths


def require_shards(key: str, spec: str | os.PathLike | None,
                   what: str = "frame-pair shards (write them with `lapa ingest`)") -> list[str]:
    """`list_shards(spec)` for a command's input `key`: `ConfigError` naming the key when nothing matches
    (the check of shard inputs in `check_inputs` hooks)."""
    if not spec:
        raise ConfigError(f"{key} is not set: set {key}=DIR to a folder, glob or .tar of {what}")
    try:
        return list_shards(spec)
    except FileNotFoundError:
        problem = "no .tar shards in this folder" if os.path.isdir(os.fspath(spec)) else "no such shards"
        raise ConfigError(f"{key}={os.fspath(spec)}: {problem}; expected a folder, glob or .tar of "
                          f"{what}") from None
