"""Writing episode frames as mp4 with PyAV (H.264 when the build has an encoder, else MPEG-4 part 2)."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from lapa.io import atomic_path


@lru_cache(maxsize=1)
def video_codec() -> str:
    """The best available encoder: libx264 (H.264), else mpeg4, which every FFmpeg build has."""
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises various errors for a missing encoder
            continue
    raise RuntimeError("PyAV has no H.264 or MPEG-4 encoder")


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 10, crf: int = 18) -> None:
    """Write uint8 frames [T, H, W, 3] (H, W even) as an mp4 with exactly T frames, atomically.

    crf 18 is near-lossless for H.264: small objects at 64-128 px keep their colour edges, which the
    latent action model needs.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0 or h % 2 or w % 2:
        raise ValueError(f"need >= 1 frame and even height/width for yuv420p, got {frames.shape}")
    codec = video_codec()
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            else:
                stream.bit_rate = max(200_000, h * w * fps * 2)
            for frame in frames:
                # Convert to yuv420p ourselves and hand the encoder a fresh frame: with rgb24 frames
                # converted inside `encode`, the bytes (and decoded pixels) of moving content differed
                # from run to run here, which made `sim generate` -> `lapa ingest` irreproducible.
                rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
                yuv = rgb.reformat(format="yuv420p").to_ndarray()  # [H * 3 / 2, W] planar
                for packet in stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
