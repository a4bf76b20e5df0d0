"""Pair augmentations: identical on both frames, switchable, in range; layout and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapa.data.transforms import ColourJitter, PairAugment, ensure_size, stack_planar, to_float


def test_stack_planar_layout_flip_and_float():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 2, 5, 7, 3), generator=g, dtype=torch.uint8).numpy()
    flips = np.array([False, True, False])
    x = stack_planar([(s[0], s[1]) for s in imgs], flips)
    assert x.shape == (3, 3, 2, 5, 7) and x.dtype == torch.uint8
    assert x[0, 2, 1, 4, 6] == imgs[0, 1, 4, 6, 2]
    assert x[1, 2, 1, 4, 0] == imgs[1, 1, 4, 6, 2]  # mirrored: column 0 <- column 6
    y = to_float(x)
    assert y.dtype == torch.float32 and torch.allclose(y * 255, x.float())
    with pytest.raises(ValueError, match="different sizes"):
        stack_planar([(imgs[0, 0],), (imgs[0, 0][:4],)])


def pairs(b: int, seed: int = 0) -> torch.Tensor:
    """planar uint8 [B, 3, 2, 12, 10] with both frames equal."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (b, 3, 1, 12, 10), generator=g, dtype=torch.uint8)
    return frame.repeat(1, 1, 2, 1, 1)


def test_flips_are_per_sample_and_shared_by_both_frames():
    aug = PairAugment(hflip=True, generator=torch.Generator().manual_seed(0))
    flips = aug.flips(200)
    assert flips.dtype == bool and 70 <= flips.sum() <= 130
    frame = np.arange(12, dtype=np.uint8).reshape(1, 4, 3).repeat(2, 0)  # [2, 4, 3]
    x = stack_planar([(frame, frame)] * 200, flips)
    assert torch.equal(x[:, :, 0], x[:, :, 1])
    assert [bool(x[i, 0, 0, 0, 0] == 9) for i in range(200)] == flips.tolist()
    assert PairAugment(hflip=False).flips(8) is None


def test_erasing_same_rectangle_and_noise_in_both_frames():
    x = pairs(32)
    out = PairAugment(erasing=1.0, generator=torch.Generator().manual_seed(0)).erase(x.clone())
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert all(not torch.equal(out[i], x[i]) for i in range(32))
    assert torch.equal(PairAugment(erasing=0.0).erase(x.clone()), x)


def test_colour_jitter_same_on_both_frames_and_in_range():
    x = to_float(pairs(32))
    raw = ColourJitter(0.1, generator=torch.Generator().manual_seed(0))(pairs(32).float(), scale=1 / 255)
    out = ColourJitter(0.1, generator=torch.Generator().manual_seed(0))(x.clone())
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert ((out - x).abs().flatten(1).amax(1) > 1e-3).all()  # every sample changed
    assert (out - x).abs().max() < 0.35  # ... but only mildly
    torch.testing.assert_close(raw, out)  # the folded conversion gives the same result
    assert torch.equal(ColourJitter(0.0)(x.clone()), x)


def test_colour_jitter_matches_sequential_definition():
    """The fused formula equals brightness -> contrast -> saturation applied one by one."""
    g = torch.Generator().manual_seed(3)
    x = 0.25 + 0.5 * torch.rand(8, 3, 2, 16, 16, generator=g)  # mid-range: no clamping involved
    out = ColourJitter(0.1, generator=torch.Generator().manual_seed(5))(x.clone())
    fac = torch.Generator().manual_seed(5)
    fb, fc, fs = ((0.9 + 0.2 * torch.rand(8, generator=fac)).view(8, 1, 1, 1, 1) for _ in range(3))
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)
    y = x * fb
    mean = (y * w).sum(1, keepdim=True)[:, :, :, ::4, ::4].mean(dim=(2, 3, 4), keepdim=True)
    y = fc * y + (1 - fc) * mean
    y = fs * y + (1 - fs) * (y * w).sum(1, keepdim=True)
    torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)


def test_resizing():
    rgb = np.zeros((30, 20, 3), np.uint8)
    assert ensure_size(rgb, 16).shape == (16, 16, 3)
    assert ensure_size(rgb, None) is rgb


def test_uint8_colour_jitter_matches_float_jitter_rounded():
    """The in-place per-sample uint8 path = the float jitter (same draws) rounded to nearest, in place."""
    x = pairs(6)
    ref = ColourJitter(0.3, generator=torch.Generator().manual_seed(1))(x.float(), scale=1.0, limit=255.0)
    ref = ref.add_(0.5).to(torch.uint8)
    y = x.clone()
    out = ColourJitter(0.3, generator=torch.Generator().manual_seed(1)).uint8_(y)
    assert out.data_ptr() == y.data_ptr() and out.dtype == torch.uint8
    assert (out.int() - ref.int()).abs().max() <= 1  # float rounding at .5 boundaries only
    assert (out != ref).float().mean() < 1e-3
    assert torch.equal(out[:, :, 0], out[:, :, 1]) == torch.equal(x[:, :, 0], x[:, :, 1])
    assert torch.equal(ColourJitter(0.0).uint8_(x.clone()), x)
    with pytest.raises(ValueError):
        ColourJitter(0.1).uint8_(x.float())
