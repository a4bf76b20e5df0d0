"""The LAQ's own measures: codebook statistics of latent actions and reconstruction PSNR.

One implementation per measure, used by the quantiser (`nsvq`), training (`task`), `lapa label` and
`lapa eval-laq`. They are written in torch, so the training path keeps its tensors on the device and never
waits for it (counts by `scatter_add`, no `bincount`, no `.item()`); numpy inputs are converted and the
result comes back as numpy, which is what labelling and evaluation work with.

Conventions:
- Latent actions are int arrays `[N, L]`: L positions, each a code in 0..K-1. A whole latent action is
  identified by its combination id `sum_l idx[:, l] * K**(L-1-l)` (position 0 most significant).
- Pixels are floats in [0, 1]; a prediction is clamped to [0, 1] before its error is measured (the LAQ
  decoder's output is not clamped, but an image is).
- PSNR of a set of images is computed from the *mean* MSE over the set, `10 log10(1 / mean_mse)`, not as
  the mean of per-image PSNRs: a pair whose two frames are identical (a robot standing still) has an
  infinite per-image copy-PSNR, which would make the mean meaningless.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

Array = np.ndarray | Tensor
A = TypeVar("A", np.ndarray, Tensor)


def _tensor(x: Array | float) -> tuple[Tensor, bool]:
    """`x` as a tensor, and whether it has to go back to numpy (it was not a tensor)."""
    if isinstance(x, Tensor):
        return x, False
    return torch.as_tensor(np.asarray(x)), True


def to_numpy(x: Array) -> np.ndarray:
    """A tensor (any device, detached) or array-like as a numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


# --------------------------------------------------------------------------------------------------
# Codebook statistics
# --------------------------------------------------------------------------------------------------
def code_counts(indices: A, codebook_size: int, per_position: bool = False) -> A:
    """How often each code occurs: int64 `[K]` over all of `indices` (any shape), or, with
    `per_position`, `[L, K]` for indices `[N, L]` (one histogram per position).

    Indices outside 0..K-1 raise ValueError when they are on the CPU; on a GPU (and inside a compiled
    graph) that check would wait for the device, so it is skipped there (the quantiser's argmin cannot
    produce them).
    """
    idx, was_numpy = _tensor(indices)
    idx = idx.long()
    if per_position and idx.ndim != 2:
        raise ValueError(f"indices must be [N, L], got shape {tuple(idx.shape)}")
    if idx.device.type == "cpu" and idx.numel() and not torch.compiler.is_compiling():
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= codebook_size:
            raise ValueError(f"indices outside 0..{codebook_size - 1}: min {low}, max {high}")
    rows = idx.shape[1] if per_position else 1
    flat = idx + codebook_size * torch.arange(rows, device=idx.device) if per_position else idx
    flat = flat.flatten()
    # scatter_add rather than bincount: bincount syncs with the host on CUDA to size its output.
    counts = torch.zeros(rows * codebook_size, dtype=torch.long, device=idx.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    counts = counts.reshape(rows, codebook_size) if per_position else counts
    return counts.cpu().numpy() if was_numpy else counts


def perplexity(counts: A) -> A:
    """exp(entropy) of the usage distribution along the last axis: `[..., K]` -> `[...]`.

    K for uniform usage, 1 when a single code is used, 0 for no observations at all. Numpy in: float64
    out; tensors: float32 (the dtype of the model's other outputs), computed in float64.
    """
    c, was_numpy = _tensor(counts)
    c = c.double()
    total = c.sum(dim=-1, keepdim=True)
    p = c / total.clamp_min(1.0)
    ent = -torch.special.xlogy(p, p).sum(dim=-1)  # xlogy: 0 log 0 = 0
    out = torch.where(total[..., 0] > 0, ent.exp(), torch.zeros_like(ent))
    return out.numpy() if was_numpy else out.float()


def perplexity_of(indices: Tensor, codebook_size: int) -> Tensor:
    """Perplexity of the code histogram of `indices` (any shape): what the quantiser reports per batch."""
    return perplexity(code_counts(indices, codebook_size))


def utilisation(counts: A) -> A:
    """Fraction of the K codes used at least once: `[..., K]` -> `[...]` in [0, 1]."""
    c, was_numpy = _tensor(counts)
    out = (c > 0).double().mean(dim=-1)
    return out.numpy() if was_numpy else out.float()


def combo_ids(indices: Array, codebook_size: int) -> np.ndarray:
    """One integer per latent action: `[N, L]` -> `[N]` int64 (base-K number, position 0 most significant)."""
    idx = to_numpy(indices).astype(np.int64)
    weights = codebook_size ** np.arange(idx.shape[1] - 1, -1, -1, dtype=np.int64)
    return idx @ weights


def combo_histogram(indices: Array) -> Counter:
    """Counts of each whole latent action (tuple of L codes); `len()` is the number of distinct combos."""
    return Counter(tuple(int(v) for v in row) for row in to_numpy(indices).astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------
def per_image_mse(pred: Tensor, target: Tensor) -> Tensor:
    """MSE of each image: pred/target `[B, C, H, W]` in [0, 1] -> `[B]` (pred clamped to [0, 1])."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    diff = pred.float().clamp(0.0, 1.0) - target.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse: A | float, max_val: float = 1.0, min_mse: float = 0.0) -> A | float:
    """`10 log10(max_val^2 / mse)` in dB, elementwise; a float, array or tensor comes back as such.

    An MSE of 0 gives +inf unless `min_mse` floors it (training logs use 1e-10, i.e. 100 dB, so that a
    perfect batch does not put an infinity into the logs).
    """
    t, was_numpy = _tensor(mse)
    t = t.double() if was_numpy else t
    out = 10.0 * torch.log10(max_val**2 / t.clamp_min(min_mse))
    if not was_numpy:
        return out
    return float(out) if out.ndim == 0 else out.numpy()


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR (dB) of a batch `[B, C, H, W]` from its mean MSE (see the module docstring)."""
    return float(psnr_from_mse(float(per_image_mse(pred, target).mean())))
