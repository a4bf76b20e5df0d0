"""Small file-system helpers shared by every stage: atomic writes so that a killed job never leaves a
partial file under its final name."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name ends in `.tmp` (ignored by every reader of this project), lives in the same
    directory (so the rename is atomic on POSIX) and is removed when the block raises.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the permissions an ordinary open() would (shared storage).
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; put it in place of `path` only if the block succeeds.

    An existing `path` is replaced (moved aside, then deleted) when `overwrite`, else FileExistsError.
    The temporary name ends in `.partial` (not `.tmp`: `remove_stale_temporaries` deletes those as files)
    and is removed when the block raises. Permissions are an ordinary mkdir's (shared storage).
    """
    final = Path(path).resolve()
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put directory `tmp` in place of `final` (a directory, a file or nothing): the old one is moved aside
    first and deleted after, so `final` is always either the old or the new one, never a mixture."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, final)


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete the temporary files that `atomic_path` left in `directory` when a kill interrupted a
    write (never a file under a final name). Call only when no write into `directory` is running.
    Returns the number removed."""
    stale = list(Path(directory).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write a JSON file atomically (keys kept in insertion order)."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
