"""Reading RGB frames from video files (PyAV) and from image-sequence folders.

A "video" is either a container file (mp4, avi, mkv, webm, mov, ...) or a folder holding one image per
frame (the way Something-Something v2 is distributed), sorted naturally (`2.jpg` before `10.jpg`).

Everything that can go wrong with real files (zero bytes, truncation, a text file named `.mp4`, no video
stream, undecodable frames) raises `VideoReadError` with a short `reason` (a category, counted in ingest
summaries) and a `detail` (the decoder's message). Frames always come out as RGB uint8 `[H, W, 3]`,
whatever the source pixel format (grayscale, yuv, palette) or size (odd, portrait, tiny).

Target-fps resampling is done by time: output frame k is the first source frame at or after time
k / fps. It never invents frames: a target above the native rate keeps the native rate.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapa.data.images import decode_jpeg

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoReadError(Exception):
    """A video that cannot be read. `reason` is a short category, `detail` the specific message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: `frame2` < `frame10`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def is_image_sequence(path: Path) -> bool:
    """A folder holding at least one image file (its frames)."""
    return path.is_dir() and any(
        p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in path.iterdir())


def discover_videos(root: str | os.PathLike, extensions: tuple[str, ...] | list[str] = VIDEO_EXTENSIONS
                    ) -> list[Path]:
    """Every video file (by extension, case-insensitive) and image-sequence folder under `root`.

    Returned sorted naturally by relative path, so the order (and everything planned from it) does not
    depend on the file system's listing order. Images inside a sequence folder are not videos.
    """
    root = Path(root)
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        current = Path(dirpath)
        if current != root and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            found.append(current)  # an image-sequence folder: its images are its frames
        found += [current / f for f in filenames if Path(f).suffix.lower() in exts]
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def resample_indices(native_fps: float, target_fps: float | None) -> tuple[float, _Selector]:
    """The effective fps and a selector of source frame indices for a target fps (None = native)."""
    if target_fps is None or target_fps >= native_fps:
        return native_fps, _Selector(1.0)
    return target_fps, _Selector(native_fps / target_fps)


class _Selector:
    """Decides, frame by frame, which source frames a resampled stream keeps.

    Output frame k takes source frame ceil(k * step - eps): the first frame at or after time k / fps.
    Streaming (one call per source frame), so the number of frames need not be known in advance.
    """

    def __init__(self, step: float) -> None:
        self.step = step
        self.k = 0

    def _next_source(self) -> int:
        return math.ceil(self.k * self.step - 1e-6)

    def keep(self, source_index: int) -> bool:
        if source_index < self._next_source():
            return False
        self.k += 1
        return True


@dataclass
class Frame:
    index: int  # index in the (resampled) output stream
    source_index: int  # index of the decoded source frame
    rgb: np.ndarray  # uint8 [H, W, 3]


class VideoReader:
    """Opens a video file or image-sequence folder; `frames()` yields resampled RGB frames.

    `fps` is the native rate: the container's average rate, or for folders `sequence_fps` (the caller
    knows it from a manifest; folders carry none).
    """

    def __init__(self, path: str | os.PathLike, sequence_fps: float = 10.0) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VideoReadError("missing file", str(self.path))
        self.is_sequence = self.path.is_dir()
        if self.is_sequence:
            self._images = sorted((p for p in self.path.iterdir()
                                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                                  key=lambda p: natural_key(p.name))
            if not self._images:
                raise VideoReadError("no frames", "folder holds no images")
            self.fps = float(sequence_fps)
            return
        if self.path.stat().st_size == 0:
            raise VideoReadError("empty file", "0 bytes")
        self.fps = self._probe_fps()

    def _open(self):
        import av

        try:
            container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, OSError) as err:
            raise VideoReadError("not a readable video", f"{type(err).__name__}: {err}") from None
        if not container.streams.video:
            container.close()
            raise VideoReadError("no video stream", f"streams: {[s.type for s in container.streams]}")
        return container

    def _probe_fps(self) -> float:
        container = self._open()
        try:
            stream = container.streams.video[0]
            for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
                if rate is not None and float(rate) > 0:
                    return float(rate)
            raise VideoReadError("unknown frame rate", "the container declares no frame rate")
        finally:
            container.close()

    def frames(self, target_fps: float | None = None) -> Iterator[Frame]:
        """Yield the frames of the resampled stream in order. Raises VideoReadError on a decode error."""
        _, selector = resample_indices(self.fps, target_fps)
        source = self._sequence_frames() if self.is_sequence else self._container_frames()
        k = 0
        for i, decode in enumerate(source):
            if selector.keep(i):
                yield Frame(k, i, decode())
                k += 1

    def _sequence_frames(self) -> Iterator:
        for image in self._images:
            def decode(image: Path = image) -> np.ndarray:
                try:
                    return _as_rgb(decode_jpeg(image.read_bytes()))
                except Exception as err:  # PIL raises many types for a broken image
                    raise VideoReadError("undecodable frame", f"{image.name}: {err}") from None
            yield decode

    def _container_frames(self) -> Iterator:
        """Decoded frames as lazy converters, so skipped frames never pay the RGB conversion."""
        import av

        container = self._open()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threading: several times faster on multi-core hosts
            decoded = 0
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    yield lambda frame=frame: _as_rgb(frame.to_ndarray(format="rgb24"))
            except av.FFmpegError as err:
                raise VideoReadError("decode error", f"after {decoded} frames: {err}") from None
            if decoded == 0:
                raise VideoReadError("no frames", "the video stream decodes to no frames")
        finally:
            container.close()


def _as_rgb(array: np.ndarray) -> np.ndarray:
    """Any decoded image (gray [H, W], gray+alpha, RGBA) as contiguous RGB uint8 [H, W, 3]."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:
        raise VideoReadError("unsupported pixel format", f"dtype {array.dtype}")
    return np.ascontiguousarray(array)
