"""LAPADataModule and frame_pair_loader over small synthetic shards."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from lapa.config import ConfigError, to_schema
from lapa.data import datamodule as dm
from lapa.data.datamodule import DataConfig, LAPADataModule, frame_pair_loader
from lapa.data.images import encode_jpeg

sys.path.insert(0, str(Path(__file__).parent))
from synth import coded_image, make_pair_shards, make_step_shards, sample_id  # noqa: E402


def data_cfg(train, **kw) -> DataConfig:
    base = dict(train_shards=str(train), val_shards=None, batch_size=4, num_workers=0, image_size=16,
                shuffle_buffer=8, color_jitter=0.0, hflip=False, prefetch_factor=2)
    base.update(kw)
    return DataConfig(**base)


def ids_of(batches) -> list[int]:
    return [sample_id(f[:, 0]) for b in batches for f in b["frames"]]


def test_laq_batches_shapes_and_ranges(tmp_path):
    make_pair_shards(tmp_path, shards=2, per_shard=6)
    module = LAPADataModule(data_cfg(tmp_path, hflip=True, color_jitter=0.1, random_erasing=0.5), "laq")
    batches = list(module.train_dataloader())
    assert len(batches) == 3  # 12 samples, batch 4, full batches only
    for b in batches:
        assert set(b) == {"frames"}
        assert b["frames"].shape == (4, 3, 2, 16, 16) and b["frames"].dtype == torch.float32
        assert 0 <= float(b["frames"].min()) and float(b["frames"].max()) <= 1


def test_resize_to_requested_size(tmp_path):
    make_pair_shards(tmp_path, shards=1, per_shard=4, size=24)
    batch = next(iter(LAPADataModule(data_cfg(tmp_path, image_size=16), "laq").train_dataloader()))
    assert batch["frames"].shape == (4, 3, 2, 16, 16)
    assert sorted(ids_of([batch])) == [0, 1, 2, 3]


def test_two_ranks_two_workers_disjoint_and_covering(tmp_path, monkeypatch):
    make_pair_shards(tmp_path, shards=8, per_shard=5)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        cfg = data_cfg(tmp_path, num_workers=2, batch_size=1, resampled=False)
        seen.append(ids_of(LAPADataModule(cfg, "laq").train_dataloader()))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert len(seen[0]) == len(seen[1]) == 20


def test_resampled_epoch_has_fixed_length(tmp_path):
    make_pair_shards(tmp_path, shards=3, per_shard=4)
    module = LAPADataModule(data_cfg(tmp_path, resampled=True, epoch_size=20), "laq")
    loader = module.train_dataloader()
    assert len(loader) == 5 and len(list(loader)) == 5 and len(list(loader)) == 5


def test_corrupt_samples_and_truncated_tar_are_skipped(tmp_path):
    from lapa.data.shards import write_shard

    good = encode_jpeg(coded_image(1, 16))
    samples = [{"__key__": f"{i:03d}", "t.jpg": good, "t1.jpg": good, "json": {}} for i in range(6)]
    samples[1]["t1.jpg"] = b"\xff\xd8 not really a jpeg"
    del samples[3]["t1.jpg"]
    write_shard(tmp_path / "a-000000.tar", samples)
    whole = (tmp_path / "a-000000.tar").read_bytes()
    (tmp_path / "a-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # truncated copy
    before = dm.skipped_samples()
    module = LAPADataModule(data_cfg(tmp_path, batch_size=1, shard_shuffle=False), "laq")
    frames = [b["frames"] for b in module.train_dataloader()]
    after = dm.skipped_samples()
    assert 4 <= len(frames) <= 4 + 2  # the 4 good ones of shard 0, plus whatever the truncated one holds
    assert after.get("bad jpeg", 0) - before.get("bad jpeg", 0) >= 1
    assert after.get("missing part", 0) - before.get("missing part", 0) >= 1
    assert sum(after.values()) - sum(before.values()) >= 3  # + the truncated tar


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
    assert torch.equal(first["action"][2], torch.full((7,), 2.0))
    with tarfile.open(paths[0]) as tar:
        assert first["t_jpeg"][0] == tar.extractfile("000000.t.jpg").read()
    again = [k for b in frame_pair_loader(tmp_path, batch_size=3, num_workers=2) for k in b["key"]]
    assert sorted(again) == keys
    no_action = make_pair_shards(tmp_path / "plain", shards=1, per_shard=2)
    assert next(iter(frame_pair_loader(no_action, batch_size=2)))["action"] is None


def test_foundation_and_finetune_batches(tmp_path):
    make_step_shards(tmp_path / "lat", 1, 5, "latent")
    make_step_shards(tmp_path / "rob", 1, 5, "robot")
    b = next(iter(LAPADataModule(data_cfg(tmp_path / "lat", shuffle_buffer=0, hflip=True),
                                 "foundation").train_dataloader()))
    assert b["image"].shape == (4, 3, 16, 16) and b["latent_tokens"].dtype == torch.int64
    assert b["latent_tokens"].tolist() == [[n % 8, 1, 2, 3] for n in range(4)]
    assert b["text"] == [f"do {n}" for n in range(4)]
    b = next(iter(LAPADataModule(data_cfg(tmp_path / "rob", shuffle_buffer=0, hflip=True),
                                 "finetune").train_dataloader()))
    assert b["actions"].shape == (4, 7) and b["actions"].dtype == torch.float32
    assert torch.equal(b["actions"][3], torch.arange(7.0) + 3)
    # hflip=True is ignored for robot data: the blue ramp still rises left to right in every image.
    assert (b["image"][:, 2, :, -1] > b["image"][:, 2, :, 0]).all()


def test_config_yaml_presets_and_validation():
    from omegaconf import OmegaConf

    import lapa.conf

    conf_dir = Path(lapa.conf.__file__).parent / "data"
    names = sorted(p.stem for p in conf_dir.glob("*.yaml"))
    assert {"frames", "openx_webdataset", "sthv2_webdataset", "bridge_webdataset", "latent",
            "robot_steps"} <= set(names)
    for name in names:
        cfg = to_schema(OmegaConf.load(conf_dir / f"{name}.yaml"), DataConfig)
        if name.endswith("webdataset"):
            assert (cfg.batch_size, cfg.num_workers, cfg.shuffle_buffer) == (256, 8, 1000)
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        DataConfig(batch_size=0)


DDP_SCRIPT = Path(__file__).parent / "ddp_smoke.py"


@pytest.mark.timeout(300)
def test_ddp_two_cpu_ranks_equal_batch_counts(tmp_path):
    make_pair_shards(tmp_path / "shards", shards=3, per_shard=7)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path / "shards"), str(out)],
                          capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # 21 samples, 2 ranks x batch 2 -> 5 batches per rank; 2 workers -> ceil(5/2)=3 each -> 6 per epoch.
    assert counts[0]["batches"] == counts[1]["batches"] == [6, 6]
    assert counts[0]["shape"] == [2, 3, 2, 16, 16]


def test_worker_buffers_are_reused_only_after_release():
    buffers = dm._SharedBuffers(limit=2)
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
    loader = LAPADataModule(cfg, "laq").train_dataloader()
    assert ids_of(loader) == list(range(24))  # 12 batches through 3 buffers: none overwritten early
    raw = [b for b in loader.loader]  # the bare DataLoader never releases: every batch a fresh buffer
    assert [sample_id(f[:, 0].float() / 255) for b in raw for f in b["frames"]] == list(range(24))
    assert all(set(b) == {"frames"} for b in loader)


def test_mixed_sizes_without_image_size_are_skipped(tmp_path):
    make_pair_shards(tmp_path / "a", shards=1, per_shard=3, size=16)
    make_pair_shards(tmp_path / "b", shards=1, per_shard=2, size=24)
    before = dm.skipped_samples().get("frame size mismatch", 0)
    batches = list(frame_pair_loader([tmp_path / "a", tmp_path / "b"], batch_size=8))
    assert [b["frames"].shape for b in batches] == [(3, 3, 2, 16, 16)]
    assert dm.skipped_samples().get("frame size mismatch", 0) - before == 2


def _resumed(cfg: DataConfig, epoch: int, batches: int) -> LAPADataModule:
    """A fresh data module handed the state a checkpoint taken at (epoch, batches) would hold."""
    module = LAPADataModule(cfg, "laq")
    module.setup("fit")
    module.load_state_dict({"epoch": epoch, "batches": batches, "stream": module._stream_fingerprint()})
    return module


@pytest.mark.parametrize("workers, resampled", [(0, False), (2, False), (2, True)])
def test_resumed_stream_continues_with_the_same_batches(tmp_path, workers, resampled):
    """Stop in the middle of epoch 1, rebuild the module from the checkpoint's state: the remaining
    batches are those the uninterrupted run saw, samples and augmentation alike."""
    make_pair_shards(tmp_path, shards=4, per_shard=6)
    cfg = data_cfg(tmp_path, num_workers=workers, resampled=resampled, epoch_size=24 if resampled else None,
                   hflip=True, color_jitter=0.2, random_erasing=0.5, shuffle_buffer=10)
    loader = LAPADataModule(cfg, "laq").train_dataloader()
    epochs = [list(loader), list(loader)]
    assert len(epochs[1]) >= 5 and ids_of(epochs[0]) != ids_of(epochs[1])  # epochs differ in order
    resumed = list(_resumed(cfg, epoch=1, batches=3).train_dataloader())
    assert len(resumed) == len(epochs[1]) - 3
    for want, got in zip(epochs[1][3:], resumed):
        assert torch.equal(want["frames"], got["frames"])
    again = LAPADataModule(cfg, "laq").train_dataloader()  # and a fresh run repeats epoch 0 exactly
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(epochs[0], again))


def test_resume_with_other_loader_settings_restarts_the_epoch(tmp_path, caplog):
    make_pair_shards(tmp_path, shards=2, per_shard=6)
    cfg = data_cfg(tmp_path)
    module = LAPADataModule(cfg, "laq")
    module.setup("fit")
    state = {"epoch": 2, "batches": 2, "stream": module._stream_fingerprint()}
    other = LAPADataModule(data_cfg(tmp_path, batch_size=2), "laq")
    other.load_state_dict(state)
    assert "changed since the checkpoint" in caplog.text
    assert len(list(other.train_dataloader())) == 6  # the whole of epoch 2, nothing skipped


def test_resampled_stream_over_unreadable_shards_fails_instead_of_spinning(tmp_path):
    for i in range(3):
        (tmp_path / f"pairs-{i:06d}.tar").write_bytes(b"not a tar file at all" * 40)
    loader = LAPADataModule(data_cfg(tmp_path, resampled=True, epoch_size=8), "laq").train_dataloader()
    with pytest.raises(RuntimeError, match="no readable sample in 10 shards"):
        list(loader)
