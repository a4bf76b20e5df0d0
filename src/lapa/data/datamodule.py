"""`LAPADataModule` (spec 2.1.2): a thin Lightning adapter over the Lightning-free loaders of
`lapa.data.loader` (`train_loader`, `eval_loader`), for the stages trained with the Lightning Trainer.

What it adds to the loaders: rank and world size from the Trainer, the training stream's position in
every Lightning checkpoint (`state_dict` / `load_state_dict`), and the mark that tells the loader which
batch was trained on (`on_before_batch_transfer`: Lightning fetches one batch ahead, so the batch
handed out is not yet the batch trained on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L

from lapa.data.float_batches import FloatBatches
from lapa.data.formats import ShardFormat
from lapa.data.frame_pairs import FRAME_PAIRS
from lapa.data.loader import DataConfig, TrainLoader, eval_loader, train_loader
from lapa.data.lockstep import LockstepBatches


class LAPADataModule(L.LightningDataModule):
    """Train/val loaders of one shard format (`frame_pairs.FRAME_PAIRS`, `latent_labelled.LATENT_LABELLED`,
    `robot_steps.ROBOT_STEPS`) over WebDataset shards."""

    def __init__(self, cfg: DataConfig, fmt: ShardFormat = FRAME_PAIRS,
                 dummy_batch: Callable[[], dict] | None = None) -> None:
        """`dummy_batch`: for a sharded model (FSDP2), a batch to run on ranks out of validation batches,
        so every rank runs as many forward passes (`data.lockstep`); None: each rank runs its own count."""
        super().__init__()
        self.cfg, self.fmt, self.dummy_batch = cfg, fmt, dummy_batch
        self._state: dict | None = None  # from a checkpoint (`load_state_dict`), for the next train loader
        self._train_loader: TrainLoader | None = None

    def _world(self) -> tuple[int | None, int | None]:
        """(rank, world size) from the Trainer; (None, None) without one: the loaders ask `dist_env()`."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None

    def train_dataloader(self) -> TrainLoader:
        """This rank's training batches (`loader.TrainLoader`), starting where the checkpoint handed to
        `load_state_dict` stood, or where the previous train loader stood (Lightning reloading loaders)."""
        rank, world = self._world()
        previous = self._train_loader
        loader = train_loader(self.cfg, self.fmt, rank=rank, world=world, explicit_marks=True,
                              start=previous.position() if previous is not None else None)
        if self._state:
            loader.load_state_dict(self._state)
            self._state = None  # once: a reloaded loader continues from the one before
        self._train_loader = loader
        return loader

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self._train_loader is not None:
            self._train_loader.mark_trained()  # this batch enters a training step
        return batch

    # Lightning saves this in every checkpoint and hands it back on resume (before train_dataloader).
    # The position is the data stream's own (its epochs need not match Lightning's: a run stopped by
    # max_steps ends Lightning's epoch but not the stream's).
    def state_dict(self) -> dict:
        return self._train_loader.state_dict() if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state) or None

    def val_dataloader(self) -> FloatBatches | LockstepBatches | list:
        if not self.cfg.val_shards:
            return []
        rank, world = self._world()
        loader = eval_loader(self.cfg, self.fmt, rank=rank, world=world)
        if self.dummy_batch is not None and world is not None and world > 1:
            return LockstepBatches(loader, self.dummy_batch, world)
        return loader
