"""The decode/batch engine (`lapa.data.batching`): shared worker buffers reused only once released,
batches intact through them, and images of another size skipped when not resized."""

from __future__ import annotations

import sys
from pathlib import Path

from lapa.data.batching import RELEASE, SharedBuffers
from lapa.data.loader import frame_pair_loader, train_loader
from lapa.data.skips import skipped_samples

sys.path.insert(0, str(Path(__file__).parent))
from synth import data_cfg, ids_of, make_pair_shards, sample_id  # noqa: E402


def test_worker_buffers_are_reused_only_after_release():
    buffers = SharedBuffers(limit=2)
    a, flag_a = buffers.take((2, 3))
    b, _ = buffers.take((2, 3))
    assert a.data_ptr() != b.data_ptr() and int(flag_a) == 0  # a still in use: a fresh buffer
    flag_a.fill_(1)  # released by the trainer process (FloatBatches)
    c, flag_c = buffers.take((2, 3))
    assert c.data_ptr() == a.data_ptr() and int(flag_c) == 0
    d, flag_d = buffers.take((2, 3))  # none free: a fresh one, kept in place of the oldest
    assert d.data_ptr() not in (a.data_ptr(), b.data_ptr()) and len(buffers.buffers) == 2
    flag_d.fill_(1)
    assert buffers.take((2, 3))[0].data_ptr() == d.data_ptr()


def test_batches_through_reused_worker_buffers_stay_intact(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=12)
    cfg = data_cfg(tmp_path, batch_size=2, num_workers=1, shuffle_buffer=0, shard_shuffle=False,
                   prefetch_factor=1)
    loader = train_loader(cfg)
    assert ids_of(loader) == list(range(24))  # 12 batches through 3 buffers: none overwritten early
    raw = list(loader.dataloader)  # the bare DataLoader never releases: every batch a fresh buffer
    assert all(RELEASE in b for b in raw)
    assert [sample_id(f[:, 0].float() / 255) for b in raw for f in b["frames"]] == list(range(24))
    assert all(set(b) == {"frames"} for b in loader)


def test_mixed_sizes_without_image_size_are_skipped(tmp_path):
    make_pair_shards(tmp_path / "a", shards=1, per_shard=3, size=16)
    make_pair_shards(tmp_path / "b", shards=1, per_shard=2, size=24)
    before = skipped_samples().get("frame size mismatch", 0)
    batches = list(frame_pair_loader([tmp_path / "a", tmp_path / "b"], batch_size=8))
    assert [b["frames"].shape for b in batches] == [(3, 3, 2, 16, 16)]
    assert skipped_samples().get("frame size mismatch", 0) - before == 2
