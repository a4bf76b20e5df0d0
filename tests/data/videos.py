"""Real video files for tests, written with PyAV, with the frame index encoded in the pixels.

Frame i is a flat colour with red = `level(i)` (green = 255 - red), which survives lossy codecs,
resizing, cropping and grayscale conversion well enough that `frame_index(rgb)` recovers i exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

STEP = 8


def level(i: int) -> int:
    return 16 + STEP * i


def frame_index(rgb: np.ndarray) -> int:
    """Recover i from a decoded frame (red channel, or gray for grayscale sources)."""
    return int(round((float(rgb[..., 0].mean()) - 16) / STEP))


def frame_rgb(i: int, width: int, height: int) -> np.ndarray:
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = level(i), 255 - level(i), 128
    return rgb


def bordered_rgb(i: int, width: int, height: int) -> np.ndarray:
    """A mid-gray (100) frame framed by a white band, 10 % of the shorter side thick on every side: which
    borders survive a resize tells crop, pad and squash apart. (The same for every i.)"""
    band = round(0.1 * min(width, height))
    rgb = np.full((height, width, 3), 255, dtype=np.uint8)
    rgb[band:height - band, band:width - band] = 100
    return rgb


def make_video(path: Path, codec: str = "libx264", frames: int = 8, width: int = 64, height: int = 48,
               fps: int = 10, gray: bool = False, pix_fmt: str = "yuv420p",
               pattern: Callable[[int, int, int], np.ndarray] = frame_rgb) -> Path:
    """Encode `frames` frames `pattern(i, width, height)`; `gray` stores a single-channel (gray) pixel
    format. yuv420p needs even sizes: odd sizes need e.g. ffv1 with yuv444p."""
    assert level(frames - 1) <= 255, "too many frames for the pixel counter"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "gray" if gray else pix_fmt
        if codec in ("libx264", "libvpx", "libvpx-vp9"):
            stream.options = {"crf": "10"} if codec == "libx264" else {"crf": "10", "b:v": "0"}
        else:
            stream.bit_rate = 2_000_000
        for i in range(frames):
            rgb = pattern(i, width, height)
            image = av.VideoFrame.from_ndarray(rgb[..., 0].copy() if gray else rgb,
                                               format="gray" if gray else "rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_image_folder(path: Path, frames: int = 6, width: int = 40, height: int = 30) -> Path:
    """An image-sequence folder named so that lexical order is wrong (1, 2, ..., 10)."""
    path.mkdir(parents=True)
    for i in range(frames):
        Image.fromarray(frame_rgb(i, width, height)).save(path / f"img{i + 1}.png")
    return path
