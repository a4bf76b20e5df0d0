"""Square resizing (`images.resize_square`): crop, pad and squash on arrays of any aspect ratio."""

from __future__ import annotations

import numpy as np
import pytest

from lapa.data.images import RESIZE_MODES, resize_square


def halves(h: int, w: int) -> np.ndarray:
    """Left half red, right half blue: [h, w, 3]."""
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[:, : w // 2, 0] = 255
    rgb[:, w // 2:, 2] = 255
    return rgb


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("h, w", [(30, 40), (40, 30), (32, 32), (3, 200), (200, 3), (5, 7)])
def test_any_shape_becomes_size_by_size(mode, h, w):
    out = resize_square(halves(h, w), 16, mode)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_pad_letterboxes_centred_and_keeps_both_halves():
    out = resize_square(halves(30, 60), 20, "pad")  # 60 -> 20: content rows 5..14, black bars above, below
    assert not out[:5].any() and not out[15:].any()
    assert out[5:15, :9, 0].min() > 200 and out[5:15, 11:, 2].min() > 200  # the whole width is there


def test_squash_keeps_both_edges_and_crop_drops_the_long_sides():
    wide = halves(20, 80)
    wide[:, :10] = (0, 255, 0)  # green at the far left: cut by crop, kept by squash and pad
    squashed, cropped = resize_square(wide, 20, "squash"), resize_square(wide, 20, "crop")
    assert squashed[:, 0, 1].min() > 200 and squashed[:, -1, 2].min() > 200
    assert cropped[:, :, 1].max() < 30  # no green left: the borders of the long side are gone
    assert cropped[:, 0, 0].min() > 200 and cropped[:, -1, 2].min() > 200  # the middle, still red | blue


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="zoom"):
        resize_square(halves(4, 4), 8, "zoom")
