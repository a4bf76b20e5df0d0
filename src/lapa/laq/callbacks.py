"""The LAQ-specific Lightning callback of `lapa train-laq`.

- `ReconstructionGrid`: after every validation, a PNG grid (frame t | frame t+1 | reconstruction) in
  `<run>/recon/`, also sent to TensorBoard (`add_image`) or W&B (`log_image`) when that is the logger.

The stage-independent callbacks (`SeedPerBatch`, `ConfigInCheckpoint`, `AtomicCheckpointIO`) live in
`lapa.training.lightning_callbacks`, the drawing helpers in `lapa.pictures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lapa.pictures import save_png, tile, to_chw, to_uint8


def make_grid(frames: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """frames [N, 3, 2, H, W], recon [N, 3, H, W] (pixels in [0, 1]) -> uint8 [3, N*(H+p)+p, 3*(W+p)+p].

    Row i shows frame t, frame t+1 and the clamped reconstruction of pair i on a white background,
    at the frames' own size (no upscaling, no labels).
    """
    rows = [[to_uint8(f[:, 0], min_size=0), to_uint8(f[:, 1], min_size=0), to_uint8(r, min_size=0)]
            for f, r in zip(frames, recon)]
    return to_chw(tile(rows, pad=pad))


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
