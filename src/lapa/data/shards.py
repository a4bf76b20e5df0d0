"""Writing, finding and reading WebDataset tar shards.

Formats (DESIGN.md section 5); WebDataset groups the files of one sample by the name before the first
dot, so the parts of a sample use dotted suffixes:
- frame pairs (Stage 1):   KEY.t.jpg, KEY.t1.jpg, KEY.json, [KEY.txt], [KEY.action.npy]
- latent-labelled (Stage 2): KEY.jpg, KEY.txt, KEY.latent.npy (int [code_seq_len]), KEY.json
- robot steps (Stage 3):   KEY.jpg, KEY.txt, KEY.action.npy (float32 [7]), KEY.json, [KEY.state.npy]

Every shard is written under a temporary name and renamed when complete, so a killed job never leaves a
partial shard under a final name, and a finished shard can be trusted by a resumed job.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lapa.io import atomic_path

# Suffixes of each format: the contract between the stages.
FRAME_PAIR_KEYS = ("t.jpg", "t1.jpg", "json")
LATENT_KEYS = ("jpg", "txt", "latent.npy", "json")
ROBOT_STEP_KEYS = ("jpg", "txt", "action.npy", "json")


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

    def __enter__(self) -> "ShardWriter":
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


# ---- reading shards -----------------------------------------------------------------------------------
# A minimal tar reader for the training path: Python's `tarfile` (under `wds.tarfile_to_samples`) spends
# more per sample than the JPEG decode of a small frame (25 ms per 32 pairs, most of it in header
# parsing); this one reads the headers it needs (ustar, pax `path`/`size`, GNU long names) straight
# from the stream and yields the same samples as WebDataset.
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file types (old-style, ustar, contiguous)
_META_NAME = re.compile(r"__[^/]*__($|/)")  # WebDataset's skipped metadata members


class ShardReadError(ValueError):
    """A tar shard is truncated or has a corrupt header."""


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ShardReadError(f"truncated tar: {what} has {len(data)} of {n} bytes")
    return data


def _tar_number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 (GNU) when the top bit of the first byte is set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ShardReadError(f"corrupt tar header: number field {field!r}") from None


def _pax_fields(data: bytes) -> dict[str, str]:
    """Records `LEN KEY=VALUE\\n` of a pax extended header (LEN counts the whole record)."""
    fields, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        end = pos + int(data[pos:space])
        key, _, value = data[space + 1:end - 1].partition(b"=")
        fields[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return fields


def _check_header(header: bytes) -> None:
    stored = _tar_number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)
    if stored != signed:  # some old tars summed signed chars; tarfile accepts both
        raise ShardReadError("corrupt tar header: bad checksum")


def iter_tar_files(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of a tar stream, in order.

    Stops at the end-of-archive block (or at a clean end of the stream between members); raises
    `ShardReadError` for a truncated member, a pax/long-name header without its member, or a corrupt
    header. Links, directories and the like are
    skipped, as `tarfile`'s `isreg()` does.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(_BLOCK)
        if (not header and not pax and long_name is None) or header == _ZERO_BLOCK:
            return  # end of archive
        if len(header) != _BLOCK:
            raise ShardReadError(f"truncated tar: header has {len(header)} of {_BLOCK} bytes")
        _check_header(header)
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _tar_number(header[124:136])
        data = _read_exact(stream, size, "a member")
        _read_exact(stream, -size % _BLOCK, "padding")
        if kind == b"x":  # pax header of the next member
            pax = _pax_fields(data)
            continue
        if kind == b"L":  # GNU long name of the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (b"g", b"K"):  # pax global header, GNU long link name: nothing we use
            continue
        name = pax.get("path") or long_name or _ustar_name(header)
        long_name, pax = None, {}
        if kind in _REGULAR:
            yield name, data


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0]
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")


def shard_samples(stream: BinaryIO, url: str, on_error: Callable[[Exception], Any]) -> Iterator[dict]:
    """Samples of one tar stream, grouped exactly as `wds.tarfile_to_samples` does: consecutive members
    with the same key form a sample {"__key__", "__url__", suffix (lower case): bytes}.

    A duplicate suffix in a sample is reported to `on_error` and dropped; a truncated or corrupt tar is
    reported and ends the shard (the samples before it, and the one being read, are kept: the decoders
    reject a sample that lost a part).
    """
    from webdataset.tariterators import base_plus_ext  # WebDataset's own key/suffix split

    sample: dict | None = None
    try:
        for name, data in iter_tar_files(stream):
            if _META_NAME.match(name):
                continue
            key, suffix = base_plus_ext(name)
            if key is None:
                continue
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            suffix = suffix.lower()
            if suffix in sample:
                on_error(ValueError(f"{url}: {name}: duplicate file name in tar file"))
                continue
            sample[suffix] = data
    except (ShardReadError, ValueError, OSError) as err:
        on_error(ShardReadError(f"{url}: {err}"))
    if sample is not None:
        yield sample


def tar_samples(sources: Iterable[dict], on_error: Callable[[Exception], Any]) -> Iterator[dict]:
    """Pipeline stage, in place of `wds.tarfile_to_samples`: {"url": ...} -> samples of each shard.

    Any URL `wds.gopen` opens works (local paths, `pipe:`, http); a shard that cannot be opened or read
    is reported to `on_error` and skipped.
    """
    from webdataset.gopen import gopen

    for source in sources:
        url = source["url"]
        try:
            stream = gopen(url)
            if url.endswith((".gz", ".tgz")):  # compressed shards (as `tarfile`'s "r|*" read them)
                stream = gzip.GzipFile(fileobj=stream)
        except Exception as err:  # gopen raises whatever its opener raises
            on_error(err)
            continue
        try:
            yield from shard_samples(stream, url, on_error)
        finally:
            # A pipe's exit status after an early stop (end of an epoch mid-shard) is no data error,
            # and a failed read was reported above: like WebDataset, ignore errors on closing.
            with contextlib.suppress(Exception):
                stream.close()
