"""`lapa.pictures`: uint8 conversion, grid layout (padding, labels, highlights) and the PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lapa.pictures import BG, LABEL_H, RED, ROW_LABEL_W, save_png, tile, to_chw, to_uint8


def test_to_uint8_clamps_and_upscales():
    img = torch.tensor([-1.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 8, 6)
    small = to_uint8(img, min_size=0)
    assert small.shape == (8, 6, 3) and small.dtype == np.uint8
    assert small[0, 0].tolist() == [0, 128, 255]
    big = to_uint8(img)  # default: at least 96 px high, by an integer factor (12 here)
    assert big.shape == (96, 72, 3) and (big == small[0, 0]).all()


def test_tile_layout():
    black, white = np.zeros((8, 6, 3), np.uint8), np.full((8, 6, 3), 255, np.uint8)
    grey = np.full((8, 6, 3), 100, np.uint8)
    img = np.asarray(tile([[black, grey, black], [grey]], pad=2))
    assert img.shape == (2 * 10 + 2, 3 * 8 + 2, 3)  # rows * (h + pad) + pad, cols * (w + pad) + pad
    assert (img[2:10, 2:8] == 0).all() and (img[2:10, 10:16] == 100).all()  # row 0: black, grey
    assert (img[12:20, 2:8] == 100).all() and (img[12:20, 10:] == 255).all()  # a short row: white rest
    assert (img[0:2] == 255).all() and (img[:, 0:2] == 255).all()  # padding is background

    labelled = tile([[white, white], [white, white]], col_labels=["a", "b"], row_labels=["r0", "r1"],
                    highlight={(1, 0)})
    arr = np.asarray(labelled)
    assert labelled.size == (ROW_LABEL_W + 2 * 10 + 4, LABEL_H + 2 * 12 + 4)
    assert (arr[:LABEL_H, ROW_LABEL_W:] != 255).any()  # column labels drawn above the grid
    y, x = LABEL_H + 4 + 12, ROW_LABEL_W + 4  # the top-left corner of cell (1, 0)
    assert tuple(arr[y - 2, x + 2]) == RED and tuple(arr[4 + LABEL_H - 2, x + 2]) == BG


@pytest.mark.parametrize("kind", ["pil", "array", "tensor"])
def test_png_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    img = {"pil": Image.fromarray(pixels), "array": pixels,
           "tensor": torch.from_numpy(pixels).permute(2, 0, 1)}[kind]
    save_png(img, tmp_path / "sub" / "p.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "p.png")), pixels)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["p.png"]  # no temporary left
    assert torch.equal(to_chw(Image.fromarray(pixels)), torch.from_numpy(pixels).permute(2, 0, 1))
