"""Shared helpers of the LAQ training tests: synthetic frame pairs with discrete actions, a tiny model
config and an in-memory datamodule (no shards, fully deterministic)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lapa.laq import LAQConfig

# Four discrete actions: the square moves by this (dy, dx) in pixels between frame t and t+1.
ACTIONS = ((0, 6), (0, -6), (6, 0), (-6, 0))


def moving_square_pairs(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """n frame pairs [n, 3, 2, size, size] in [0, 1]: a coloured square on a two-tone background moved
    by one of ACTIONS; returns (frames, action index per pair)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, 3, 2, size, size), np.float32)
    actions = rng.integers(0, len(ACTIONS), n)
    side = size // 5
    for i in range(n):
        background = rng.uniform(0.1, 0.4, 3).astype(np.float32)
        colour = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        y, x = rng.integers(8, size - side - 8, 2)
        dy, dx = ACTIONS[actions[i]]
        for t, (yy, xx) in enumerate(((y, x), (y + dy, x + dx))):
            frames[i, :, t] = background[:, None, None]
            frames[i, :, t, size // 2:, :] *= 0.5  # a "table" edge: static structure to reproduce
            frames[i, :, t, yy:yy + side, xx:xx + side] = colour[:, None, None]
    return torch.from_numpy(frames), actions


def tiny_model_config(**overrides) -> LAQConfig:
    """About 0.2 M parameters at 64 px with 8 px patches (8x8 grid, 4 action tokens)."""
    kw = dict(image_size=64, patch_size=8, dim=64, quant_dim=16, spatial_depth=1, temporal_depth=1,
              decoder_depth=1, heads=2, dim_head=32, codebook_size=8, code_seq_len=4,
              pixel_convention="signed_tanh")
    kw.update(overrides)
    return LAQConfig(**kw)


class PairDataset(Dataset):
    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"frames": self.frames[i]}


class PairDataModule(L.LightningDataModule):
    """Train and validation loaders over in-memory pairs, unshuffled (deterministic order)."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor | None = None, batch_size: int = 8) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PairDataset(self.train), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        data = self.val if self.val is not None else self.train
        return DataLoader(PairDataset(data), batch_size=self.batch_size, shuffle=False)


def write_pair_shards(directory, n: int, seed: int, per_shard: int = 8) -> list[str]:
    """Frame-pair shards (DESIGN.md section 5: KEY.t.jpg, KEY.t1.jpg, KEY.json) of moving squares."""
    from pathlib import Path

    from lapa.data.images import encode_jpeg
    from lapa.data.shards import shard_name, write_shard

    frames, _ = moving_square_pairs(n, seed=seed)
    pixels = (frames.permute(0, 2, 3, 4, 1).numpy() * 255).round().astype(np.uint8)  # [n, 2, H, W, 3]
    directory = Path(directory)
    paths = []
    for s, start in enumerate(range(0, n, per_shard)):
        samples = [{"__key__": f"sq{seed}_{i:05d}", "t.jpg": encode_jpeg(pixels[i, 0], 95),
                    "t1.jpg": encode_jpeg(pixels[i, 1], 95),
                    "json": {"video_id": f"sq{seed}_{i}", "frame_idx": 0, "frame_idx_t1": 1, "offset": 1,
                             "fps": 10, "source": "synthetic", "src_frame_t": 0, "src_frame_t1": 1}}
                   for i in range(start, min(n, start + per_shard))]
        path = directory / shard_name("pairs", s)
        write_shard(path, samples)
        paths.append(str(path))
    return paths
