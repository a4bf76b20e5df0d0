"""Lightning callbacks and the checkpoint-IO plugin of `lapa train-laq`.

- `ReconstructionGrid`: after every validation, a PNG grid (frame t | frame t+1 | reconstruction) in
  `<run>/recon/`, also sent to TensorBoard (`add_image`) or W&B (`log_image`) when that is the logger.
- `ConfigInCheckpoint`: stores the resolved run config (dict and YAML text) in every checkpoint.
- `SeedPerBatch`: seeds the model's noise (NSVQ, dropout) by the batch number, so a resumed run
  continues with exactly the noise of an uninterrupted one.
- `AtomicCheckpointIO`: writes each checkpoint to a temporary file in the same directory and renames it,
  so `last.ckpt` is never half-written. (Lightning's own save writes through an fsspec transaction whose
  temporary file lies in the system temp dir; the final move is a copy when that is another disk.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from PIL import Image

from lapa.io import atomic_path


def make_grid(frames: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """frames [N, 3, 2, H, W], recon [N, 3, H, W] (pixels in [0, 1]) -> uint8 [3, N*(H+p)+p, 3*(W+p)+p].

    Row i shows frame t, frame t+1 and the clamped reconstruction of pair i on a white background.
    """
    n, c, _, h, w = frames.shape
    tiles = torch.stack([frames[:, :, 0], frames[:, :, 1], recon], dim=1).float().clamp(0, 1).cpu()
    grid = torch.ones(c, n * (h + pad) + pad, 3 * (w + pad) + pad)
    for i in range(n):
        for j in range(3):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y:y + h, x:x + w] = tiles[i, j]
    return (grid * 255.0).round().to(torch.uint8)


def save_png(grid: torch.Tensor, path: str | Path) -> None:
    """Write a uint8 [3, H, W] image atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


class ReconstructionGrid(L.Callback):
    """Saves `rows` reconstructions of the first validation batch as `recon/step_<N>.png`."""

    def __init__(self, out_dir: str | Path, rows: int = 8) -> None:
        self.out_dir = Path(out_dir)
        self.rows = rows
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (self.rows == 0 or batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking
                or not trainer.is_global_zero or not isinstance(outputs, dict) or "recon" not in outputs):
            return
        grid = make_grid(outputs["frames"][: self.rows], outputs["recon"][: self.rows])
        step = trainer.global_step
        path = self.out_dir / f"step_{step:08d}.png"
        save_png(grid, path)
        self.last_path = path
        for logger in trainer.loggers:
            self._send(logger, grid, step)

    @staticmethod
    def _send(logger: Any, grid: torch.Tensor, step: int) -> None:
        """TensorBoard and W&B take images; other loggers (CSV) only get the PNG on disk."""
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image("val/reconstructions", grid, global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image("val/reconstructions", images=[grid.permute(1, 2, 0).numpy()],
                             caption=["frame t | frame t+1 | reconstruction"], step=step)


class ConfigInCheckpoint(L.Callback):
    """Puts the resolved run config (a dict and its YAML text) into every checkpoint."""

    def __init__(self, config: dict, config_yaml: str) -> None:
        self.config = config
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["lapa_config"] = self.config
        checkpoint["lapa_config_yaml"] = self.config_yaml


class SeedPerBatch(L.Callback):
    """Seeds torch's RNG from (seed, training batch number, rank) before every training batch.

    The model's randomness (NSVQ noise substitution, dropout) then depends only on where the run is, so
    a resumed run draws exactly the noise the uninterrupted run would have drawn. Saving and restoring
    the RNG state instead is not enough: dataloader iterators, validation and sanity checks also draw
    from the global generator, at different points in a resumed and an uninterrupted run. The batch
    counter is Lightning's, saved in every checkpoint; ranks get distinct streams.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # this batch included
        torch.manual_seed((self.seed * 1_000_003 + batches * 4099 + trainer.global_rank) % 2**63)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, then an atomic rename onto it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
