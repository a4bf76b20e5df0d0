"""The minimal tar reader (`tar_reader.tar_samples`): the same samples as WebDataset, corrupt tars skipped."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from lapa.data.tar_reader import ShardReadError, iter_tar_files, shard_samples, tar_samples

sys.path.insert(0, str(Path(__file__).parent))
from synth import make_pair_shards  # noqa: E402

ODD_NAMES = [
    "000000.t.jpg", "000000.t1.jpg", "000000.json",  # a frame pair
    "000001.JPG", "000001.Latent.NPY",  # suffixes are lower-cased
    "dir.v2/000002.txt", "dir.v2/000002.seg.png",  # the key keeps its folder, dots there included
    "x" * 120 + ".txt",  # longer than a ustar name field: pax path / GNU long name
    "nested/" * 20 + "000003.txt",  # long path: ustar prefix field
    "README",  # no suffix: ignored
    "__meta__", "__index__/x.json",  # WebDataset metadata: ignored
    "000004.txt",
]


def tar_bytes(names: list[str], fmt: int, dirs: bool = False) -> bytes:
    """A tar of `names` (content: the name, reversed) in `tarfile` format `fmt`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if dirs:
            info = tarfile.TarInfo("dir.v2")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in names:
            data = name[::-1].encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime: pax headers in PAX_FORMAT
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wds_samples(paths: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(paths), wds.tarfile_to_samples()))


def our_samples(paths: list[str], errors: list | None = None) -> list[dict]:
    errors = [] if errors is None else errors
    return list(tar_samples(({"url": p} for p in paths), on_error=errors.append))


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_same_samples_as_webdataset(tmp_path, fmt):
    names = [n for n in ODD_NAMES if fmt != tarfile.USTAR_FORMAT or len(n) <= 100 or "/" in n]
    path = tmp_path / "odd.tar"
    path.write_bytes(tar_bytes(names, fmt, dirs=True))
    errors = []
    ours = our_samples([str(path)], errors)
    assert ours == wds_samples([str(path)]) and not errors
    assert [s["__key__"] for s in ours][:3] == ["000000", "000001", "dir.v2/000002"]
    assert ours[1]["latent.npy"] == b"YPN.tnetaL.100000"


def test_same_samples_as_webdataset_on_written_shards(tmp_path):
    paths = [str(p) for p in make_pair_shards(tmp_path, shards=3, per_shard=4, action=True)]
    ours = our_samples(paths)
    assert ours == wds_samples(paths)
    assert len(ours) == 12 and set(ours[0]) == {"__key__", "__url__", "t.jpg", "t1.jpg", "json", "txt",
                                                 "action.npy"}


def test_truncated_tar_keeps_what_came_before_and_reports_once(tmp_path):
    whole = tar_bytes([f"{i:03d}.{s}" for i in range(6) for s in ("a", "b")], tarfile.PAX_FORMAT)
    cut = tmp_path / "cut.tar"
    member = 2048  # pax header block + its record block + ustar header + one data block
    for end in (5 * member + 1536 + 3, 7 * member + 1024 + 100, member + 700):  # in data, header, pax
        cut.write_bytes(whole[:end])
        errors = []
        samples = our_samples([str(cut)], errors)
        assert len(errors) == 1 and isinstance(errors[0], ShardReadError), end
        assert [s["__key__"] for s in samples] == [f"{i:03d}" for i in range(len(samples))]
        assert all(s["a"] == f"{s['__key__']}.a"[::-1].encode() for s in samples)


def test_corrupt_header_ends_the_shard(tmp_path):
    data = bytearray(tar_bytes(["0.a", "1.a", "2.a"], tarfile.USTAR_FORMAT))
    data[1024 + 10] ^= 0xFF  # the second member's name: its checksum no longer matches
    errors = []
    assert list(shard_samples(io.BytesIO(bytes(data)), "x.tar", errors.append)) == [
        {"__key__": "0", "__url__": "x.tar", "a": b"a.0"}]
    assert len(errors) == 1 and "checksum" in str(errors[0])


def test_duplicate_suffix_is_reported_and_dropped():
    names = ["0.a", "0.a", "0.b"]
    errors = []
    samples = list(shard_samples(io.BytesIO(tar_bytes(names, tarfile.PAX_FORMAT)), "x.tar", errors.append))
    assert samples == [{"__key__": "0", "__url__": "x.tar", "a": b"a.0", "b": b"b.0"}]
    assert len(errors) == 1


def test_missing_shard_is_reported_and_skipped(tmp_path):
    good = make_pair_shards(tmp_path, shards=1, per_shard=2)
    errors = []
    samples = our_samples([str(tmp_path / "missing.tar"), str(good[0])], errors)
    assert len(samples) == 2 and len(errors) == 1


def test_iter_tar_files_stops_at_clean_end():
    whole = tar_bytes(["0.a", "1.a"], tarfile.PAX_FORMAT)
    assert [name for name, _ in iter_tar_files(io.BytesIO(whole))] == ["0.a", "1.a"]
    without_end_blocks = whole[:whole.index(b"a.1") + 512]
    assert [name for name, _ in iter_tar_files(io.BytesIO(without_end_blocks))] == ["0.a", "1.a"]


def test_gzip_compressed_shards_read_like_webdataset(tmp_path):
    import gzip
    import shutil

    (plain,) = make_pair_shards(tmp_path, shards=1, per_shard=3)
    packed = tmp_path / "pairs.tar.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    errors = []
    ours = our_samples([str(packed)], errors)
    assert not errors and len(ours) == 3
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in ours] == \
        [{k: v for k, v in s.items() if k != "__url__"} for s in our_samples([str(plain)])]
