"""JPEG encode/decode and resizing to squares (crop, pad, squash) on uint8 RGB arrays `[H, W, 3]`.

simplejpeg (libjpeg-turbo) is several times faster than PIL for both directions; PIL is the fallback for
what simplejpeg refuses (grayscale/CMYK/progressive oddities) so that a valid image always decodes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

try:  # pragma: no cover - exercised implicitly where simplejpeg is installed
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 array `[H, W, 3]` as JPEG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="420")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG (or any PIL-readable image) bytes to an RGB uint8 array `[H, W, 3]`."""
    if simplejpeg is not None:
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # not a baseline RGB JPEG simplejpeg can read: let PIL try
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_jpeg_into(data: bytes, out: np.ndarray) -> bool:
    """Decode straight into `out` (uint8 `[H, W, 3]`, C-contiguous, e.g. a reused buffer), without an
    intermediate array. False when simplejpeg cannot read the image or it is not `H x W` (then decode
    with `decode_jpeg`; `out` may hold part of a failed decode)."""
    if simplejpeg is None:
        return False
    try:
        if tuple(simplejpeg.decode_jpeg_header(data)[:2]) != out.shape[:2]:
            return False
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        return True
    except ValueError:
        return False


def encoded_image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes, from the header only."""
    if simplejpeg is not None:
        try:
            return tuple(simplejpeg.decode_jpeg_header(data)[:2])
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as img:
        return img.height, img.width


RESIZE_MODES = ("crop", "pad", "squash")  # how a frame becomes size x size (`resize_square`)


def _resample(scale: float) -> Image.Resampling:
    """Area-averaging when shrinking (fast, no aliasing), bilinear when enlarging."""
    return Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR


def resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size`, then centre-crop to square: `[H, W, 3]` -> `[size, size, 3]`.
    Loses the borders of the longer side."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = Image.fromarray(rgb).resize((new_w, new_h), resample=_resample(scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def resize_pad(rgb: np.ndarray, size: int) -> np.ndarray:
    """Letterbox: resize so the longer side is `size`, centre on a black `[size, size, 3]` canvas.
    Keeps the whole frame and its aspect ratio; the bars carry no content."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    scale = size / max(h, w)
    new_w, new_h = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = np.asarray(
        Image.fromarray(rgb).resize((new_w, new_h), resample=_resample(scale)))
    return out


def resize_squash(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize to `[size, size, 3]` ignoring the aspect ratio: the whole frame, stretched."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    scale = size / min(h, w)  # area-averaging only when both sides shrink
    return np.asarray(Image.fromarray(rgb).resize((size, size), resample=_resample(scale)))


def resize_square(rgb: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """`[H, W, 3]` -> `[size, size, 3]` by `mode` (one of `RESIZE_MODES`): crop (`resize_center_crop`),
    pad (`resize_pad`) or squash (`resize_squash`)."""
    if mode == "crop":
        return resize_center_crop(rgb, size)
    if mode == "pad":
        return resize_pad(rgb, size)
    if mode == "squash":
        return resize_squash(rgb, size)
    raise ValueError(f"resize mode {mode!r}: must be one of {RESIZE_MODES}")
