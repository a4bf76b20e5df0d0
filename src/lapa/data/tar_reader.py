"""Reading WebDataset tar shards on the training path: a minimal tar reader, and the pipeline stage
that turns shard URLs into raw samples with unreadable data counted as skipped.

Why our own reader: Python's `tarfile` (under `wds.tarfile_to_samples`) spends more per sample than the
JPEG decode of a small frame (25 ms per 32 pairs, most of it in header parsing); this one reads the
headers it needs (ustar, pax `path`/`size`, GNU long names) straight from the stream and yields the same
samples as WebDataset: {"__key__", "__url__", suffix (lower case): bytes}.
"""

from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from lapa.data.skips import skip

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


def _count_error(exn: Exception) -> None:
    """Unreadable/truncated tars: count, warn, continue with the next shard."""
    skip("unreadable shard data", f"{type(exn).__name__}: {exn}")


def read_shards(urls: Iterable[str]) -> Iterator[dict]:
    """The first stage of every loader: raw samples of shard `urls`, in order. Unreadable shard data is
    counted as skipped (`skips.skipped_samples()`) and ends its shard. Module level: picklable."""
    return tar_samples(({"url": url} for url in urls), on_error=_count_error)
