"""The Lightning-free loaders (`lapa.data.loader`) over small synthetic shards: batches, splits, corrupt
data, exact restarts of a plain training loop, ordered evaluation and inference."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest
import torch

from lapa.config import ConfigError, compose, to_schema
from lapa.data.images import encode_jpeg
from lapa.data.latent_labelled import LATENT_LABELLED
from lapa.data.loader import DataConfig, eval_loader, frame_pair_loader, train_loader
from lapa.data.shards import write_shard
from lapa.data.skips import skipped_samples
from lapa.data.stream import StreamPosition

sys.path.insert(0, str(Path(__file__).parent))
from synth import coded_image, data_cfg, ids_of, make_pair_shards, make_step_shards  # noqa: E402


def test_frame_pair_batches_shapes_and_ranges(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=6)
    batches = list(train_loader(data_cfg(tmp_path, hflip=True, color_jitter=0.1, random_erasing=0.5)))
    assert len(batches) == 3  # 12 samples, batch 4, full batches only
    for b in batches:
        assert set(b) == {"frames"}
        assert b["frames"].shape == (4, 3, 2, 16, 16) and b["frames"].dtype == torch.float32
        assert 0 <= float(b["frames"].min()) and float(b["frames"].max()) <= 1


def test_resize_to_requested_size(tmp_path):
    make_pair_shards(tmp_path, shards=1, per_shard=4, size=24)
    batch = next(iter(train_loader(data_cfg(tmp_path, image_size=16))))
    assert batch["frames"].shape == (4, 3, 2, 16, 16)
    assert sorted(ids_of([batch])) == [0, 1, 2, 3]


def test_two_ranks_two_workers_disjoint_and_covering(tmp_path, monkeypatch):
    make_pair_shards(tmp_path, shards=8, per_shard=5)
    cfg = data_cfg(tmp_path, num_workers=2, batch_size=1, resampled=False)
    seen = [ids_of(train_loader(cfg, rank=rank, world=2)) for rank in range(2)]
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert len(seen[0]) == len(seen[1]) == 20
    monkeypatch.setenv("RANK", "1")  # without rank/world: the launcher's environment (`dist_env`)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ids_of(train_loader(cfg)) == seen[1]


def test_resampled_epoch_has_fixed_length(tmp_path):
    make_pair_shards(tmp_path, shards=3, per_shard=4)
    loader = train_loader(data_cfg(tmp_path, resampled=True, epoch_size=20))
    assert len(loader) == 5 and len(list(loader)) == 5 and len(list(loader)) == 5
    with pytest.raises(TypeError):
        len(train_loader(data_cfg(tmp_path, resampled=False)))


def test_corrupt_samples_and_truncated_tar_are_skipped(tmp_path):
    good = encode_jpeg(coded_image(1, 16))
    samples = [{"__key__": f"{i:03d}", "t.jpg": good, "t1.jpg": good, "json": {}} for i in range(7)]
    samples[1]["t1.jpg"] = b"\xff\xd8 not really a jpeg"
    del samples[3]["t1.jpg"]
    del samples[5]["json"]  # a required part of the frame-pair format
    write_shard(tmp_path / "a-000000.tar", samples)
    whole = (tmp_path / "a-000000.tar").read_bytes()
    (tmp_path / "a-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # truncated copy
    before = skipped_samples()
    frames = [b["frames"] for b in train_loader(data_cfg(tmp_path, batch_size=1, shard_shuffle=False))]
    after = skipped_samples()
    assert 4 <= len(frames) <= 4 + 2  # the 4 good ones of shard 0, plus whatever the truncated one holds
    assert after.get("bad jpeg", 0) - before.get("bad jpeg", 0) >= 1
    assert after.get("missing part", 0) - before.get("missing part", 0) >= 2
    assert after.get("unreadable shard data", 0) - before.get("unreadable shard data", 0) == 1


def run_loop(loader, steps: int) -> list[torch.Tensor]:
    """A plain training loop: `steps` batches, over as many epochs as that takes."""
    out: list[torch.Tensor] = []
    while len(out) < steps:
        for batch in loader:
            out.append(batch["frames"])
            if len(out) == steps:
                break
    return out


@pytest.mark.parametrize("workers, resampled", [(0, False), (2, False), (0, True), (2, True)])
def test_plain_loop_restarted_from_its_position_gives_the_same_batches(tmp_path, workers, resampled):
    """Stop a plain loop after k batches (mid epoch 0, at the end of epoch 0 before the loop saw it end,
    mid epoch 1), rebuild the loader from the saved state: the batches that follow are those of the
    uninterrupted loop, samples and augmentation (flip, jitter, erasing) alike, across epoch ends."""
    make_pair_shards(tmp_path, shards=4, per_shard=6)  # 24 samples: 6 batches of 4 per epoch
    cfg = data_cfg(tmp_path, num_workers=workers, resampled=resampled, epoch_size=24 if resampled else None,
                   hflip=True, color_jitter=0.2, random_erasing=0.5, shuffle_buffer=10)
    want = run_loop(train_loader(cfg), 15)
    assert not torch.equal(want[0], want[6])  # epochs differ (order and augmentation)
    # After 6 batches a plain loop has not seen epoch 0 end yet; a resampled epoch's length is known.
    for k, position in [(3, (0, 3)), (6, (1, 0) if resampled else (0, 6)), (8, (1, 2))]:
        first = train_loader(cfg)
        taken = run_loop(first, k)
        assert all(torch.equal(a, b) for a, b in zip(taken, want))
        assert first.position() == StreamPosition(*position)  # after the last batch taken
        state = first.state_dict()
        del first
        resumed = train_loader(cfg)
        resumed.load_state_dict(state)
        rest = run_loop(resumed, 15 - k)
        assert len(rest) == 15 - k and all(torch.equal(a, b) for a, b in zip(rest, want[k:])), k
    started = run_loop(train_loader(cfg, start=StreamPosition(1, 2)), 7)  # `start=` instead of a state
    assert all(torch.equal(a, b) for a, b in zip(started, want[8:]))


def test_position_moves_to_the_next_epoch_when_an_epoch_ends(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=6)
    loader = train_loader(data_cfg(tmp_path))
    iterator = iter(loader)
    next(iterator)
    assert loader.position() == StreamPosition(0, 1)
    assert len(list(iterator)) == 2 and loader.position() == StreamPosition(1, 0)


def test_restart_with_other_loader_settings_restarts_the_epoch(tmp_path, caplog):
    make_pair_shards(tmp_path, shards=2, per_shard=6)
    state = {"epoch": 2, "batches": 2, "stream": train_loader(data_cfg(tmp_path)).fingerprint()}
    other = train_loader(data_cfg(tmp_path, batch_size=2))
    other.load_state_dict(state)
    assert "changed since the checkpoint" in caplog.text
    assert len(list(other)) == 6  # the whole of epoch 2, nothing skipped
    assert other.position() == StreamPosition(3, 0)
    same = train_loader(data_cfg(tmp_path))
    same.load_state_dict(state)
    assert len(list(same)) == 1 and same.position() == StreamPosition(3, 0)  # 3 batches, 2 skipped


def test_resampled_stream_over_unreadable_shards_fails_instead_of_spinning(tmp_path):
    for i in range(3):
        (tmp_path / f"pairs-{i:06d}.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(RuntimeError, match="no readable sample in 10 shards"):
        list(train_loader(data_cfg(tmp_path, resampled=True, epoch_size=8)))


def test_eval_loader_is_ordered_split_by_rank_and_unaugmented(tmp_path):
    make_pair_shards(tmp_path, shards=4, per_shard=3)
    cfg = data_cfg(tmp_path / "none", val_shards=str(tmp_path), batch_size=2, hflip=True, color_jitter=0.5)
    assert ids_of(eval_loader(cfg, rank=0, world=1)) == list(range(12))  # partial batches kept
    again = [ids_of(eval_loader(cfg, rank=r, world=2)) for r in range(2)]
    assert again == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]  # shards 0, 2 and 1, 3
    with_workers = ids_of(eval_loader(data_cfg(tmp_path, val_shards=str(tmp_path), num_workers=2),
                                      rank=0, world=1))
    assert sorted(with_workers) == list(range(12))
    make_step_shards(tmp_path / "lat", 1, 5, "latent")
    batches = list(eval_loader(cfg, LATENT_LABELLED, shards=tmp_path / "lat", rank=0, world=1))
    assert [b["image"].shape for b in batches] == [(2, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]
    with pytest.raises(ValueError, match="no shards"):
        eval_loader(data_cfg(tmp_path))


def test_frame_pair_loader_is_deterministic_and_complete(tmp_path):
    paths = make_pair_shards(tmp_path, shards=2, per_shard=5, action=True)
    batches = list(frame_pair_loader(tmp_path, batch_size=3))
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"{n:06d}" for n in range(10)]  # every sample once, in shard order
    assert ids_of(batches) == list(range(10))
    first = batches[0]
    assert first["frames"].shape == (3, 3, 2, 16, 16)
    assert first["meta"][1] == {"video_id": "v1", "frame_idx": 1}
    assert first["instruction"] == ["task 0", "task 1", "task 2"]
    assert first["action"].dtype == torch.float32 and torch.equal(first["action"][2], torch.full((7,), 2.0))
    with tarfile.open(paths[0]) as tar:
        assert first["t_jpeg"][0] == tar.extractfile("000000.t.jpg").read()
    again = [k for b in frame_pair_loader(tmp_path, batch_size=3, num_workers=2) for k in b["key"]]
    assert sorted(again) == keys
    no_action = make_pair_shards(tmp_path / "plain", shards=1, per_shard=2)
    assert next(iter(frame_pair_loader(no_action, batch_size=2)))["action"] is None


def test_config_yaml_presets_and_validation():
    from omegaconf import OmegaConf

    import lapa.conf

    conf_dir = Path(lapa.conf.__file__).parent / "data"
    names = sorted(p.stem for p in conf_dir.glob("*.yaml"))
    assert {"frames", "openx_webdataset", "sthv2_webdataset", "bridge_webdataset", "latent",
            "robot_steps"} <= set(names)
    for name in names:  # composed inside a command's config: cluster presets fill the storage paths
        composed = compose("train_laq", [f"data={name}"])
        cfg = to_schema(OmegaConf.to_container(composed.data, resolve=True), DataConfig)
        if name.endswith("webdataset"):
            assert (cfg.batch_size, cfg.num_workers, cfg.shuffle_buffer) == (256, 8, 1000)
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        DataConfig(batch_size=0)


def test_an_abandoned_iterator_neither_skips_nor_repeats_batches(tmp_path):
    """What Lightning does when it resumes from a checkpoint taken at the end of an epoch: it opens an
    iterator, fetches a batch ahead, drops it untrained and opens another. The batches trained on must
    still be those of the uninterrupted run (with workers, whose copies of the stream count epochs)."""
    make_pair_shards(tmp_path, shards=4, per_shard=6)  # 6 batches of 4 per epoch
    cfg = data_cfg(tmp_path, num_workers=2, hflip=True, color_jitter=0.2, shuffle_buffer=10)
    want = run_loop(train_loader(cfg), 12)

    resumed = train_loader(cfg, start=StreamPosition(1, 0), explicit_marks=True)
    abandoned = iter(resumed)
    next(abandoned)  # fetched ahead, never trained on
    del abandoned
    got = []
    for batch in resumed:
        resumed.mark_trained()
        got.append(batch["frames"])
    assert len(got) == 6 and all(torch.equal(a, b) for a, b in zip(got, want[6:]))
    assert resumed.position() == StreamPosition(2, 0)

    partial = train_loader(cfg, explicit_marks=True)  # abandoned mid-epoch after 2 trained batches
    iterator = iter(partial)
    for _ in range(3):
        next(iterator)
    partial.mark_trained(), partial.mark_trained()
    rest = [b["frames"] for b in partial]
    assert len(rest) == 4 and all(torch.equal(a, b) for a, b in zip(rest, want[2:6]))
