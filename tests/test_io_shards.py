"""Atomic writes and the shard writer: complete shards only, never a partial one under a final name."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from lapa.data.images import decode_jpeg, encode_jpeg, resize_center_crop
from lapa.data.shards import ShardWriter, decode_npy, list_shards, shard_name, write_shard
from lapa.io import atomic_path, write_json_atomic


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": 1})
    assert target.read_text().strip().startswith("{")


def test_shard_writer_rolls_and_round_trips(tmp_path):
    with ShardWriter(tmp_path, prefix="pairs", max_count=3) as writer:
        for i in range(7):
            writer.write({"__key__": f"{i:04d}", "txt": f"sample {i}", "latent.npy": np.arange(4) + i,
                          "json": {"i": i}})
    assert [p.name for p in writer.written] == [shard_name("pairs", i) for i in range(3)]
    members = [tarfile.open(p).getnames() for p in writer.written]
    assert [len(m) for m in members] == [9, 9, 3]
    with tarfile.open(writer.written[2]) as tar:
        data = tar.extractfile("0006.latent.npy").read()
    np.testing.assert_array_equal(decode_npy(data), np.arange(4) + 6)


def test_shard_writer_drops_unfinished_shard_on_error(tmp_path):
    with pytest.raises(KeyError):
        with ShardWriter(tmp_path, max_count=2) as writer:
            for i in range(3):
                writer.write({"__key__": str(i), "txt": "x"})
            raise KeyError("boom")
    # The first full shard was completed; the buffered third sample never became a shard.
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name("shard", 0)]


def test_list_shards_patterns_and_tmp_files(tmp_path):
    for i in range(3):
        write_shard(tmp_path / shard_name("s", i), [{"__key__": "a", "txt": "x"}])
    (tmp_path / ".s-000003.tar.abc.tmp").write_bytes(b"")
    assert len(list_shards(tmp_path)) == 3
    assert len(list_shards(str(tmp_path / "s-*.tar"))) == 3
    assert len(list_shards(str(tmp_path / "s-{000000..000001}.tar"))) == 2
    with pytest.raises(FileNotFoundError):
        list_shards(str(tmp_path / "missing-*.tar"))


def test_jpeg_round_trip_and_resize():
    rng = np.random.default_rng(0)
    img = np.full((48, 80, 3), 128, np.uint8)
    img[10:30, 20:60] = rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)
    decoded = decode_jpeg(encode_jpeg(img, quality=95))
    assert decoded.shape == img.shape and np.abs(decoded.astype(int) - img).mean() < 12
    square = resize_center_crop(img, 32)
    assert square.shape == (32, 32, 3)


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "perm.json"
    write_json_atomic(target, {})
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
