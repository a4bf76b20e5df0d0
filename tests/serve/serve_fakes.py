"""Small policies for the server's tests (imported by name): deterministic, batched and recording, slow,
failing. The server must work with any `lapa.policy.Policy`, so it is tested against these, and against a
real LAPAPolicy once (test_serve_vla.py)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image


class MeanPolicy:
    """action = a function of the image's mean, size and the instruction's length (no batched call)."""

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        m = float(image.astype(np.float64).mean()) / 255.0
        h, w = image.shape[:2]
        return np.array([m, len(instruction) / 100, h / 1000, w / 1000, m * m, -m, 1.0], np.float32)


class RecordingPolicy(MeanPolicy):
    """MeanPolicy with `predict_actions` that records each batch's size, sleeps `delay` seconds per call
    (the fixed cost of a forward pass that batching shares) and notes whether two calls ever overlapped."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.sizes, self.overlapped = delay, [], False
        self._busy = threading.Lock()

    def predict_actions(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        if not self._busy.acquire(blocking=False):
            self.overlapped = True
            self._busy.acquire()
        try:
            self.sizes.append(len(images))
            if self.delay:
                time.sleep(self.delay)
            return np.stack([self.predict_action(im, text) for im, text in zip(images, instructions)])
        finally:
            self._busy.release()

    def info(self) -> dict:
        return {"name": "recording", "delay": np.float32(self.delay), "action_stats": {"mean": np.zeros(7)}}


class FailingPolicy(RecordingPolicy):
    """Fails a batch that holds the instruction "boom"; returns a wrong shape for "shape"."""

    def predict_actions(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        if "boom" in instructions:
            raise RuntimeError("kaboom")
        out = super().predict_actions(images, instructions)
        return out[:, :3] if "shape" in instructions else out


def image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def file_bytes(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jn_default(obj):
    """What json_numpy 2.x (`json_numpy.patch()`, as OpenVLA's client uses it) writes for an array."""
    if isinstance(obj, np.ndarray):
        from numpy.lib.format import dtype_to_descr

        return {"__numpy__": b64(np.ascontiguousarray(obj).tobytes()), "dtype": dtype_to_descr(obj.dtype),
                "shape": list(obj.shape)}
    raise TypeError(type(obj).__name__)


def jn_hook(dct: dict):
    """json_numpy's object_hook: an encoded array becomes an ndarray (its other keys are dropped)."""
    if "__numpy__" in dct:
        from numpy.lib.format import descr_to_dtype

        return np.frombuffer(base64.b64decode(dct["__numpy__"]), descr_to_dtype(dct["dtype"])).reshape(dct["shape"])
    return dct


def jn_dumps(obj) -> str:
    return json.dumps(obj, default=jn_default)


def jn_loads(text):
    return json.loads(text, object_hook=jn_hook)
