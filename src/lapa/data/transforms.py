"""Batched image transforms in torch: resizing, uint8 -> float, and pair augmentations.

Augmentations draw one set of parameters per sample and apply it to every frame of that sample, so the
two frames of a pair change together and the motion between them (what LAQ must encode) is untouched.
Batches arrive from the loader as planar uint8 `[B, 3, T, H, W]` (T = 2 for pairs, 1 for single
images); `to_float` makes the model's float32 in [0, 1] and applies flip, colour jitter and erasing in
the same per-sample passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from lapa.data.images import resize_center_crop


def ensure_size(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """A decoded image `[H, W, 3]` at `size` x `size` (resize shorter side + centre crop when needed)."""
    if size is None or rgb.shape[:2] == (size, size):
        return rgb
    return resize_center_crop(rgb, size)


def to_float(images: torch.Tensor, augment: PairAugment | None = None) -> torch.Tensor:
    """Planar uint8 batch `[B, 3, T, H, W]` -> float32 in [0, 1], same shape, augmented by `augment`
    when given (flip, colour jitter, erasing: the same on the T frames of a sample).

    One sample at a time: its conversion, flip and jitter all run while its floats (1.5 MB for a 256 px
    pair) stay in cache: a few cheap passes instead of a dozen over a 50 MB batch (measured: 10 ms per
    32 pairs, against 14 ms for jitter in place on uint8 plus 6 ms for a whole-batch conversion).
    On one thread: these small ops must not fan out to intra-op threads. While DataLoader workers keep
    the cores busy, each op's barrier waits for a descheduled thread: measured here with 2 workers, 30
    to 58 pairs/s with 2 torch threads in the trainer process against 560 to 800 with 1.
    """
    with _one_thread():
        return _to_float(images, augment)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch intra-op parallelism off inside, restored after (a few microseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _to_float(images: torch.Tensor, augment: PairAugment | None) -> torch.Tensor:
    b, _, t, h, w = images.shape
    out = torch.empty(images.shape, dtype=torch.float32)
    flips = augment.flips(b) if augment is not None else None
    jitter = augment.jitter.draw(b, scale=1 / 255) if augment is not None else None
    luma = torch.empty((t, h, w), dtype=torch.float32)  # jitter scratch, reused by every sample
    for i in range(b):
        out[i].copy_(images[i].flip(-1) if flips is not None and flips[i] else images[i])  # 0..255
        if jitter is None:
            out[i].mul_(1 / 255)
        else:
            _jitter_sample(out[i], jitter[i], luma)
    if augment is not None:
        augment.erase(out)
    return out


class PairAugment:
    """Augmentations of planar batches `[B, 3, T, H, W]`, identical across the T frames of a sample.

    - horizontal flip with probability 0.5 (`hflip=False` for robot-action data: a flip mirrors y/yaw):
      `flips(b)` draws the per-sample decisions, which `to_float` applies while converting;
    - colour jitter of strength `jitter` (`ColourJitter`);
    - random erasing with probability `erasing`: one rectangle (2-33 % of the area, aspect 0.3-3.3)
      filled with uniform noise, at the same place and with the same noise in every frame (`erase`).
    `to_float` applies them in the trainer process, fused with the float conversion of the uint8
    batches that workers ship. Randomness: `generator`, or torch's global RNG.
    """

    def __init__(self, hflip: bool = True, jitter: float = 0.0, erasing: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        if not 0 <= erasing <= 1:
            raise ValueError(f"erasing={erasing}: must be in [0, 1]")
        self.hflip, self.erasing, self.generator = hflip, erasing, generator
        self.jitter = ColourJitter(jitter, generator)

    def flips(self, b: int) -> np.ndarray | None:
        if not self.hflip:
            return None
        return (torch.rand(b, generator=self.generator) < 0.5).numpy()

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """In place on planar `[B, 3, T, H, W]`, uint8 or float in [0, 1]."""
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
            # same noise in every frame
            x[i, :, :, top:top + eh, left:left + ew] = noise if x.dtype == torch.uint8 else noise / 255
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

    def __call__(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Jitter `x * scale` in place, clamped to [0, 1] (`scale=1/255` converts 0..255 floats to
        [0, 1] in the same passes)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected [B, 3, T, H, W], got {list(x.shape)}")
        coefficients = self.draw(x.shape[0], scale)
        if coefficients is None:
            return x.mul_(scale) if scale != 1.0 else x
        luma = torch.empty(x.shape[2:], dtype=x.dtype)
        for xi, sample in zip(x, coefficients):
            _jitter_sample(xi, sample, luma)
        return x

    def draw(self, b: int, scale: float = 1.0) -> list[tuple[float, float, float]] | None:
        """Draw f_b, f_c, f_s for `b` samples; return per sample (gain, luma_gain, contrast) of
        out = gain x + luma_gain luma(x) + contrast mean_luma(x) (the composed formula in the class
        docstring) for inputs x in units of 1 / `scale` and outputs in [0, 1]; None when the strength
        is 0."""
        if self.strength == 0:
            return None
        s = self.strength
        fb, fc, fs = (1 - s + 2 * s * torch.rand(b, generator=self.generator) for _ in range(3))
        gain, luma_gain, contrast = fs * fc * fb, (1 - fs) * fc * fb, (1 - fc) * fb
        return list(zip((gain * scale).tolist(), (luma_gain * scale).tolist(), (contrast * scale).tolist()))


def _jitter_sample(x: torch.Tensor, coefficients: tuple[float, float, float], luma: torch.Tensor) -> None:
    """x <- clamp(gain x + luma_gain luma(x) + contrast mean_luma(x), 0, 1), in place on one float
    sample `[3, T, H, W]` (`ColourJitter.draw` gives the coefficients); `luma` is `[T, H, W]` scratch.
    The mean comes from a 4x subsample (plenty for it), read while the sample is in cache."""
    gain, luma_gain, contrast = coefficients
    r, g, b = _LUMA
    means = x[:, :, ::4, ::4].mean(dim=(1, 2, 3)).tolist()  # [3] channel means
    offset = contrast * (r * means[0] + g * means[1] + b * means[2])
    torch.mul(x[0], r * luma_gain, out=luma).add_(x[1], alpha=g * luma_gain).add_(x[2], alpha=b * luma_gain)
    luma.add_(offset)
    torch.add(luma, x, alpha=gain, out=x).clamp_(0, 1)  # luma + gain x in one pass


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as torchvision's rgb_to_grayscale
