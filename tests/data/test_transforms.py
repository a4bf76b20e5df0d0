"""Pair augmentations: identical on both frames, switchable, in range; layout and resizing."""

from __future__ import annotations

import numpy as np
import torch

from lapa.data.transforms import ColourJitter, PairAugment, ensure_size, to_float


def test_to_float_plain_and_flipped():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 2, 5, 7), generator=g, dtype=torch.uint8)
    y = to_float(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.allclose(y * 255, x.float())
    aug = PairAugment(hflip=True, generator=torch.Generator().manual_seed(1))
    flips = PairAugment(hflip=True, generator=torch.Generator().manual_seed(1)).flips(3)
    z = to_float(x, aug)
    for i in range(3):
        expected = x[i].flip(-1) if flips[i] else x[i]  # mirrored: column 0 <- column 6
        assert torch.allclose(z[i] * 255, expected.float())


def pairs(b: int, seed: int = 0) -> torch.Tensor:
    """planar uint8 [B, 3, 2, 12, 10] with both frames equal."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (b, 3, 1, 12, 10), generator=g, dtype=torch.uint8)
    return frame.repeat(1, 1, 2, 1, 1)


def test_flips_are_per_sample_and_shared_by_both_frames():
    aug = PairAugment(hflip=True, generator=torch.Generator().manual_seed(0))
    flips = PairAugment(hflip=True, generator=torch.Generator().manual_seed(0)).flips(200)
    assert flips.dtype == bool and 70 <= flips.sum() <= 130
    frame = torch.arange(12, dtype=torch.uint8).reshape(1, 1, 1, 3, 4).expand(200, 3, 2, 3, 4)
    x = to_float(frame.contiguous(), aug)
    assert torch.equal(x[:, :, 0], x[:, :, 1])
    assert [round(float(x[i, 0, 0, 0, 0]) * 255) == 3 for i in range(200)] == flips.tolist()
    assert PairAugment(hflip=False).flips(8) is None


def test_erasing_same_rectangle_and_noise_in_both_frames():
    x = pairs(32)
    out = PairAugment(erasing=1.0, generator=torch.Generator().manual_seed(0)).erase(x.clone())
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert all(not torch.equal(out[i], x[i]) for i in range(32))
    assert torch.equal(PairAugment(erasing=0.0).erase(x.clone()), x)
    floats = PairAugment(erasing=1.0, generator=torch.Generator().manual_seed(0)).erase(to_float(x))
    torch.testing.assert_close(floats, to_float(out))  # float batches get the same noise, in [0, 1]


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


def test_fused_conversion_matches_float_jitter():
    """to_float with jitter (one pass per sample from uint8) = float conversion, then the float jitter."""
    x = pairs(6)
    ref = ColourJitter(0.3, generator=torch.Generator().manual_seed(1))(x.float(), scale=1 / 255)
    aug = PairAugment(hflip=False, jitter=0.3, generator=torch.Generator().manual_seed(1))
    out = to_float(x, aug)
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(to_float(x, PairAugment(hflip=False)), to_float(x))
