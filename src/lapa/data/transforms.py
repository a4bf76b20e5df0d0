"""Batched image transforms in torch: uint8 -> float, resizing, and pair augmentations.

Augmentations draw one set of parameters per sample and apply it to every frame of that sample, so the
two frames of a pair change together and the motion between them (what LAQ must encode) is untouched.
They work on whole batches (T = 2 for pairs, 1 for single images): a few vectorised tensor ops per batch
instead of Python work per image. Flip/erase run on planar uint8 `[B, 3, T, H, W]` in the workers, and
colour jitter too (in float, a sample at a time, rounded back in place into the uint8 batch);
`to_float` makes the model's float32 in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.data

from lapa.data.images import resize_center_crop


def ensure_size(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """A decoded image `[H, W, 3]` at `size` x `size` (resize shorter side + centre crop when needed)."""
    if size is None or rgb.shape[:2] == (size, size):
        return rgb
    return resize_center_crop(rgb, size)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Planar uint8 `[B, 3, ...]` -> float32 in [0, 1], same shape (one contiguous pass)."""
    return images.float().mul_(1.0 / 255.0)


def stack_planar(samples: list[tuple[np.ndarray, ...]], flips: np.ndarray | None = None) -> torch.Tensor:
    """Per sample tuples of T decoded uint8 `[H, W, 3]` -> planar uint8 `[B, 3, T, H, W]`.

    The layout change (and a horizontal flip where `flips[i]`) happens in the one copy that batching
    needs anyway, through numpy strides: it costs nothing extra, while the same permute or flip as a
    separate torch pass over the batch would.
    """
    shapes = {a.shape for sample in samples for a in sample}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes in one batch {sorted(shapes)}; set image_size")
    h, w, c = shapes.pop()
    shape = (len(samples), c, len(samples[0]), h, w)
    batch = _new_batch(shape, torch.uint8)
    out = batch.numpy()
    for i, sample in enumerate(samples):
        flip = flips is not None and flips[i]
        for j, image in enumerate(sample):
            out[i, :, j] = (image[:, ::-1] if flip else image).transpose(2, 0, 1)
    return batch


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Empty tensor; in a DataLoader worker it lives in shared memory from the start (as torch's
    default_collate does), so handing it to the trainer process costs no extra copy."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class PairAugment:
    """Geometric augmentations of uint8 batches, identical across the T frames of a sample.

    - horizontal flip with probability 0.5 (`hflip=False` for robot-action data: a flip mirrors y/yaw):
      `flips(b)` draws the per-sample decisions, which `stack_planar` applies while batching;
    - colour jitter of strength `jitter` (`ColourJitter`);
    - random erasing with probability `erasing`: one rectangle (2-33 % of the area, aspect 0.3-3.3)
      filled with uniform noise, at the same place and with the same noise in every frame (`erase`).
    They run in DataLoader workers on uint8, which is what workers ship (4x less shared memory than
    float). Randomness: `generator`, or torch's global RNG (seeded per worker by DataLoader).
    """

    def __init__(self, hflip: bool = True, jitter: float = 0.0, erasing: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        if not 0 <= erasing <= 1:
            raise ValueError(f"erasing={erasing}: must be in [0, 1]")
        self.hflip, self.erasing, self.generator = hflip, erasing, generator
        self.jitter = ColourJitter(jitter, generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Colour jitter then erasing of a planar uint8 batch `[B, 3, T, H, W]` (flips: `flips`).

        Jitter works in float (0..255) and rounds back into a uint8 batch, which the workers ship:
        four times less shared memory than float, and the JPEG source is 8-bit anyway.
        """
        if self.jitter.strength > 0:
            self.jitter.uint8_(x)
        return self.erase(x)

    def flips(self, b: int) -> np.ndarray | None:
        if not self.hflip:
            return None
        return (torch.rand(b, generator=self.generator) < 0.5).numpy()

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """In place on planar uint8 `[B, 3, T, H, W]`."""
        if self.erasing == 0:
            return x
        b, c, t, h, w = x.shape
        for i in torch.nonzero(torch.rand(b, generator=self.generator) < self.erasing).flatten().tolist():
            area = h * w * float(0.02 + 0.31 * torch.rand(1, generator=self.generator))
            ratio = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3))
                             * float(torch.rand(1, generator=self.generator)))
            eh, ew = min(h, round(math.sqrt(area * ratio))), min(w, round(math.sqrt(area / ratio)))
            if eh < 1 or ew < 1:
                continue
            top = int(torch.randint(0, h - eh + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, w - ew + 1, (1,), generator=self.generator))
            noise = torch.randint(0, 256, (c, 1, eh, ew), generator=self.generator, dtype=torch.uint8)
            x[i, :, :, top:top + eh, left:left + ew] = noise  # same noise in every frame
        return x


class ColourJitter:
    """Brightness, contrast and saturation jitter, in place on float `[B, 3, T, H, W]` in [0, 1].

    Factors f_b, f_c, f_s uniform in [1 - s, 1 + s] per sample, shared by the T frames. Applied in that
    order, each is linear in the pixel (brightness f_b y; contrast f_c y + (1 - f_c) mean_luma(y);
    saturation f_s y + (1 - f_s) luma(y)), so they compose into one step with a single clamp:
        out = f_s f_c f_b x + (1 - f_s) f_c f_b luma(x) + (1 - f_c) f_b mean_luma(x)
    (luma weights sum to 1). Three full passes over contiguous planes instead of a dozen.
    """

    def __init__(self, strength: float = 0.1, generator: torch.Generator | None = None) -> None:
        if not 0 <= strength < 1:
            raise ValueError(f"strength={strength}: must be in [0, 1)")
        self.strength, self.generator = strength, generator

    def __call__(self, x: torch.Tensor, scale: float = 1.0, limit: float = 1.0) -> torch.Tensor:
        """Jitter `x * scale` in place, clamped to [0, limit] (`scale=1/255` converts 0..255 floats to
        [0, 1] in the same passes; `limit=255` jitters in 0..255 units)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected [B, 3, T, H, W], got {list(x.shape)}")
        if self.strength == 0:
            return x.mul_(scale) if scale != 1.0 else x
        b, (r, g, bl) = x.shape[0], _LUMA
        luma = (x[:, 0] * (r * scale)).add_(x[:, 1], alpha=g * scale).add_(x[:, 2], alpha=bl * scale)
        mean = luma[:, :, ::4, ::4].mean(dim=(1, 2, 3))  # [B]; a subsample is plenty for the mean
        gain, luma_gain, offset = self._coefficients(b, mean)
        view = (b, 1, 1, 1)
        luma.mul_(luma_gain.view(view)).add_(offset.view(view))
        return x.mul_((gain * scale).view(b, 1, 1, 1, 1)).add_(luma.unsqueeze(1)).clamp_(0, limit)

    def _coefficients(self, b: int, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw f_b, f_c, f_s per sample; return (gain, luma_gain, offset), each [B], of
        out = gain x + luma_gain luma(x) + offset (the composed formula in the class docstring)."""
        s = self.strength
        fb, fc, fs = (1 - s + 2 * s * torch.rand(b, generator=self.generator) for _ in range(3))
        return fs * fc * fb, (1 - fs) * fc * fb, (1 - fc) * fb * mean

    def uint8_(self, x: torch.Tensor) -> torch.Tensor:
        """The same jitter in place on planar uint8 `[B, 3, T, H, W]` (0..255, rounded to nearest).

        Same factors (same random draws) and formula as `__call__`, but worked one sample at a time
        through a small reused float buffer that stays in cache, and written back into `x`: a few passes
        over 1.5 MB per sample instead of a dozen over a batch-sized float tensor (~3.5x faster), and no
        second uint8 batch. The luma mean comes from per-channel means of the same 4x subsample.
        """
        if x.ndim != 5 or x.shape[1] != 3 or x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 [B, 3, T, H, W], got {x.dtype} {list(x.shape)}")
        if self.strength == 0:
            return x
        b = x.shape[0]
        mean = x[:, :, :, ::4, ::4].float().mean(dim=(2, 3, 4)) @ torch.tensor(_LUMA)  # [B] luma mean
        gain, luma_gain, offset = self._coefficients(b, mean)
        # + 0.5: round, not truncate, on the way back to uint8
        gain, luma_gain, offset = gain.tolist(), luma_gain.tolist(), (offset + 0.5).tolist()
        f = torch.empty(x.shape[1:], dtype=torch.float32)
        luma = torch.empty(x.shape[2:], dtype=torch.float32)
        r, g, bl = _LUMA
        for i in range(b):
            xi, k = x[i], luma_gain[i]
            f.copy_(xi)
            torch.mul(f[0], r * k, out=luma).add_(f[1], alpha=g * k).add_(f[2], alpha=bl * k).add_(offset[i])
            f.mul_(gain[i]).add_(luma).clamp_(0, 255)
            xi.copy_(f)
        return x


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as torchvision's rgb_to_grayscale
