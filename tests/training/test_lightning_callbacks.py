"""`lapa.training.lightning_callbacks`: per-batch seeding, config in checkpoints, atomic checkpoint
writes, the ModelCheckpoints of a run directory and the checkpoint-step reader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lapa.training.lightning_callbacks import (
    AtomicCheckpointIO,
    ConfigInCheckpoint,
    SeedPerBatch,
    checkpoint_callbacks,
    checkpoint_step,
)
from lapa.training.seeding import mix_seed


def _trainer(batches: int, rank: int) -> SimpleNamespace:
    """What SeedPerBatch reads of a Trainer: the batch counter and the rank."""
    return SimpleNamespace(global_rank=rank, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
        batch_progress=SimpleNamespace(total=SimpleNamespace(ready=batches)))))


def test_seed_per_batch_seeds_with_the_one_mixer():
    def draw(batches: int, rank: int = 0) -> float:
        torch.rand(7)  # whatever happened before must not matter
        SeedPerBatch(42).on_train_batch_start(_trainer(batches, rank), None, None, 0)  # type: ignore[arg-type]
        assert torch.initial_seed() == mix_seed(42, batches, rank)
        return float(torch.rand(()))

    assert draw(5) == draw(5)
    assert len({draw(5), draw(6), draw(5, rank=1)}) == 3


def test_config_in_checkpoint():
    checkpoint: dict = {"state_dict": {}}
    ConfigInCheckpoint({"a": 1}, "a: 1\n").on_save_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    assert checkpoint == {"state_dict": {}, "lapa_config": {"a": 1}, "lapa_config_yaml": "a: 1\n"}


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    assert checkpoint_step(path) == 1

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert checkpoint_step(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options={"x": 1})


def test_checkpoint_callbacks_follow_the_run_dir_names(tmp_path):
    callbacks, best = checkpoint_callbacks(tmp_path, every_n_steps=5, keep_periodic=3, save_best=True,
                                           monitor="val/loss")
    periodic = callbacks[0]
    assert len(callbacks) == 2 and best is callbacks[1]
    assert (periodic.filename, periodic.save_top_k, periodic.monitor, periodic.mode) == (
        "step_{step:08d}", 3, "step", "max")
    assert periodic.save_last and periodic._every_n_train_steps == 5
    assert (best.filename, best.monitor, best.mode, best.save_top_k, best.save_last) == (
        "best", "val/loss", "min", 1, False)

    only_best, best = checkpoint_callbacks(tmp_path, every_n_steps=0, keep_periodic=3, save_best=True,
                                           monitor="val/acc", mode="max")
    assert only_best == [best] and best.save_last and best.mode == "max"  # `last` comes from `best` then
    assert checkpoint_callbacks(tmp_path, 0, 1, save_best=False, monitor="x") == ([], None)


def test_quiet_lightning_prints_each_line_once_without_advertising(monkeypatch):
    """Lightning imported after the root logger got a handler (`lapa demo`) printed its lines twice, and
    its advertising in every run: each line once, no tip."""
    import io
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from lapa.training.lightning_callbacks import quiet_lightning

    root_buf, top_buf, own_buf = io.StringIO(), io.StringIO(), io.StringIO()
    pl_logger, top = logging.getLogger("lightning.pytorch"), logging.getLogger("lightning")
    monkeypatch.setattr(pl_logger, "handlers", [])  # as when Lightning is imported after logging is set up
    monkeypatch.setattr(pl_logger, "propagate", True)
    monkeypatch.setattr(top, "handlers", [logging.StreamHandler(top_buf)])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(root_buf)])
    quiet_lightning()
    quiet_lightning()  # idempotent
    assert len(pl_logger.handlers) == 1 and not pl_logger.propagate
    pl_logger.handlers[0].setStream(own_buf)
    rank_zero_info("GPU available: False, used: False")
    rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
    assert own_buf.getvalue() == "GPU available: False, used: False\n"
    assert root_buf.getvalue() == top_buf.getvalue() == ""
