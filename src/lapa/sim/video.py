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
                # zerolatency (no lookahead, macroblock tree or B-frames): with them, x264's output for
                # moving content changed from run to run here with the state of the heap (MALLOC_PERTURB_
                # made it reproducible: an uninitialised read), so `sim generate` -> `lapa ingest` was
                # not reproducible by seed.
                stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
            else:
                stream.bit_rate = max(200_000, h * w * fps * 2)
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
