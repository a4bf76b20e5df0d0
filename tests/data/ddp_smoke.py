"""DDP smoke run (2 CPU ranks, gloo): iterate the LAQ data module under Lightning; each rank writes its
batch count per epoch. Usage: python ddp_smoke.py SHARD_DIR OUT_DIR (launched by test_datamodule)."""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from lapa.data.datamodule import LAPADataModule
from lapa.data.frame_pairs import FRAME_PAIRS
from lapa.data.loader import DataConfig


class Counting(L.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.out, self.batches, self.shape = out, [], None

    def on_train_epoch_start(self) -> None:
        self.batches.append(0)

    def training_step(self, batch, _):
        self.batches[-1] += 1
        self.shape = list(batch["frames"].shape)
        return (self.weight * batch["frames"].mean()).sum()

    def on_train_end(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{self.global_rank}.json").write_text(
            json.dumps({"batches": self.batches, "shape": self.shape}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    torch.set_num_threads(1)
    shards, out = sys.argv[1], Path(sys.argv[2])
    cfg = DataConfig(train_shards=shards, val_shards=None, batch_size=2, num_workers=2, image_size=16,
                     shuffle_buffer=4, prefetch_factor=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(Counting(out), datamodule=LAPADataModule(cfg, fmt=FRAME_PAIRS))
