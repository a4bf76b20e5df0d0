"""Pictures of tensors, written once for every stage: uint8 conversion, tiling equally sized images into
a padded grid (optional column/row labels and red frames), and atomic PNG saving. PIL only (no
matplotlib, no torchvision). Training callbacks (`lapa.laq.callbacks.ReconstructionGrid`) and reports
(`lapa.eval.report`) draw with these.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from lapa.io import atomic_path

PAD = 4  # pixels between tiles and around the grid
LABEL_H = 14  # height of the column-label strip (PIL's default bitmap font is 11 px high)
ROW_LABEL_W = 28  # width of the row-label strip
BG = (255, 255, 255)
INK = (20, 20, 20)
RED = (220, 30, 30)


def to_uint8(img: torch.Tensor, min_size: int = 96) -> np.ndarray:
    """`[3, H, W]` float in [0, 1] (clamped) -> `[H', W', 3]` uint8, upscaled by an integer factor
    (nearest) until H' >= `min_size`, so small frames stay visible; `min_size=0` keeps the size."""
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    scale = max(1, math.ceil(min_size / arr.shape[0]))
    return arr.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else arr


def tile(rows: list[list[np.ndarray]], col_labels: list[str] | None = None,
         row_labels: list[str] | None = None, highlight: set[tuple[int, int]] | None = None,
         pad: int = PAD) -> Image.Image:
    """A grid of equally sized uint8 `[h, w, 3]` images on white, `pad` pixels apart and around.

    Size: width = (ROW_LABEL_W if row_labels) + ncols * (w + pad) + pad, height = (LABEL_H if
    col_labels) + len(rows) * (h + pad) + pad. Rows may be shorter than the longest (right is left
    white). `highlight` holds (row, column) cells framed red.
    """
    h, w = rows[0][0].shape[:2]
    left = ROW_LABEL_W if row_labels else 0
    top = LABEL_H if col_labels else 0
    ncols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + ncols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), BG)
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad), 1), text, fill=INK)
    for r, row in enumerate(rows):
        y = top + pad + r * (h + pad)
        if row_labels:
            draw.text((2, y + h // 2 - 5), row_labels[r], fill=INK)
        for c, img in enumerate(row):
            x = left + pad + c * (w + pad)
            canvas.paste(Image.fromarray(img), (x, y))
            if highlight and (r, c) in highlight:
                draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], outline=RED, width=2)
    return canvas


def to_chw(img: Image.Image) -> torch.Tensor:
    """A PIL RGB image -> uint8 `[3, H, W]` (what TensorBoard's `add_image` takes by default)."""
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def save_png(img: Image.Image | np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write a PNG atomically (never a partial file under `path`): a PIL image, a uint8 `[H, W, 3]`
    array or a uint8 `[3, H, W]` tensor."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
