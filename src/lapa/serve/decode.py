"""Request payloads of `POST /act` -> (image uint8 `[H, W, 3]`, instruction), and actions -> response bodies.

Pure numpy / Pillow (no web framework), so every rule here is tested without a server. Every bad input is
a `BadRequest(status, message)` with a one-line message; the app turns it into that 4xx.

Accepted JSON bodies (`Content-Type: application/json`):

    {"image": "<base64 PNG or JPEG>", "instruction": "pick up the red block"}
    {"image": [[[r, g, b], ...], ...], "instruction": "..."}           nested lists, uint8 [H, W, 3]
    {"image": {"__numpy__": "<base64>", "dtype": "|u1", "shape": [H, W, 3]}, "instruction": "..."}
        json_numpy's encoding of an array: what OpenVLA's deploy client posts after `json_numpy.patch()`
    {"encoded": "<the above as a json_numpy-encoded JSON string>"}
        OpenVLA's "double-encoded" form, for clients without json_numpy on the server side

OpenVLA's clients may add `"unnorm_key"`; it is accepted and ignored (an export carries one set of action
statistics). Any other field is refused, so a typo (`"instr"`) is an error rather than a missing value.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# How the request came, which decides the form of the answer (`encode_action`).
PLAIN, JSON_NUMPY, DOUBLE_ENCODED = "plain", "json_numpy", "encoded"
FIELDS = ("image", "instruction")
IGNORED_FIELDS = ("unnorm_key",)  # OpenVLA's clients send it
UINT8_DTYPES = ("|u1", "u1", "<u1", ">u1", "=u1", "uint8", "B")  # json_numpy 2.x writes "|u1", 1.x "uint8"


class BadRequest(ValueError):
    """A request the server refuses: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What a request may hold (the server's config sets them)."""

    max_body_bytes: int = 32 * 2**20
    max_image_side: int = 4096  # pixels, either side: a larger image is refused before it is decoded
    max_instruction_chars: int = 2000


@dataclass
class Decoded:
    image: np.ndarray  # uint8 [H, W, 3], C-contiguous
    instruction: str
    wire: str  # PLAIN | JSON_NUMPY | DOUBLE_ENCODED


def decode_json(body: bytes, limits: Limits) -> Decoded:
    """A JSON request body -> the image and instruction it holds, or BadRequest (400/422)."""
    if not body.strip():
        raise BadRequest(400, "empty request body; send JSON {\"image\": ..., \"instruction\": ...}")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadRequest(400, f"the body is not valid JSON: {_short(err)}") from None
    wire = PLAIN
    if isinstance(payload, dict) and "encoded" in payload:
        if set(payload) != {"encoded"} or not isinstance(payload["encoded"], str):
            raise BadRequest(422, "a double-encoded request is {\"encoded\": \"<JSON string>\"} and nothing else")
        try:
            payload = json.loads(payload["encoded"])
        except (ValueError, RecursionError) as err:
            raise BadRequest(422, f"field 'encoded' is not a JSON string: {_short(err)}") from None
        wire = DOUBLE_ENCODED
    if not isinstance(payload, dict):
        raise BadRequest(422, f"the JSON body must be an object with 'image' and 'instruction', got "
                              f"{type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS) - set(IGNORED_FIELDS))
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; the fields are 'image' and 'instruction'")
    if "image" not in payload:
        raise BadRequest(422, "missing field 'image' (base64 PNG/JPEG, nested uint8 lists [H][W][3], or a "
                              "json_numpy array)")
    instruction = check_instruction(payload.get("instruction"), limits)
    value = payload["image"]
    if isinstance(value, str):
        image = decode_image_file(_b64(value, "image"), limits)
    elif isinstance(value, list):
        image = decode_nested(value, limits)
    elif isinstance(value, dict) and "__numpy__" in value:
        image = decode_json_numpy(value, limits)
        wire = DOUBLE_ENCODED if wire == DOUBLE_ENCODED else JSON_NUMPY
    else:
        raise BadRequest(422, "field 'image' must be a base64 PNG/JPEG string, nested lists [H][W][3] of 0..255, "
                              f"or a json_numpy array; got {type(value).__name__}")
    return Decoded(image, instruction, wire)


def check_instruction(value: Any, limits: Limits) -> str:
    """The instruction as given (stripped of surrounding blanks), or BadRequest 422."""
    if value is None:
        raise BadRequest(422, "missing field 'instruction' (the task in words, e.g. \"pick up the red block\")")
    if not isinstance(value, str):
        raise BadRequest(422, f"field 'instruction' must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadRequest(422, "field 'instruction' is empty")
    if len(text) > limits.max_instruction_chars:
        raise BadRequest(422, f"field 'instruction' has {len(text)} characters; at most "
                              f"{limits.max_instruction_chars} are accepted")
    return text


def decode_image_file(data: bytes, limits: Limits) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 [H, W, 3] (grey and RGBA become RGB). The size is checked from the
    header before any pixel is decoded, so a small file that claims a huge image costs nothing."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadRequest(422, "the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise BadRequest(422, f"the image is {im.format or 'of an unknown format'}; send PNG or JPEG")
            _check_size(im.height, im.width, limits)
            rgb = im.convert("RGB")
            rgb.load()
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadRequest(422, f"the image cannot be decoded as PNG or JPEG: {_short(err)}") from None
    return np.array(rgb, dtype=np.uint8)  # a copy: Pillow's buffer is read-only


def decode_nested(value: list, limits: Limits) -> np.ndarray:
    """Nested lists `[H][W][3]` of integers 0..255 -> uint8 [H, W, 3]."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):  # ragged lists
        raise BadRequest(422, "field 'image' as nested lists must be rectangular, shape [H][W][3]") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadRequest(422, f"field 'image' must have shape [H, W, 3], got {list(array.shape)}")
    if array.dtype.kind not in "iu":  # floats, booleans, strings, None (object)
        raise BadRequest(422, f"field 'image' must hold integers 0..255 (uint8), got values of type "
                              f"{_kind_name(array.dtype)}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadRequest(422, f"field 'image' values must be in 0..255, got {array.min()}..{array.max()}")
    _check_size(array.shape[0], array.shape[1], limits)
    return np.ascontiguousarray(array.astype(np.uint8))


def decode_json_numpy(value: dict, limits: Limits) -> np.ndarray:
    """json_numpy's `{"__numpy__": base64 bytes, "dtype": "|u1", "shape": [H, W, 3]}` -> uint8 [H, W, 3]."""
    unknown = sorted(set(value) - {"__numpy__", "dtype", "shape"})
    if unknown:
        raise BadRequest(422, f"json_numpy array with unknown key(s) {unknown}")
    dtype, shape = value.get("dtype"), value.get("shape")
    if not isinstance(dtype, str) or dtype not in UINT8_DTYPES:
        raise BadRequest(422, f"json_numpy image must have dtype uint8 ('|u1'), got {dtype!r}")
    if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise BadRequest(422, f"json_numpy image must have shape [H, W, 3], got {shape!r}")
    _check_size(shape[0], shape[1], limits)
    if not isinstance(value["__numpy__"], str):
        raise BadRequest(422, "json_numpy field '__numpy__' must be a base64 string")
    data = _b64(value["__numpy__"], "image.__numpy__")
    if len(data) != math.prod(shape):
        raise BadRequest(422, f"json_numpy image holds {len(data)} bytes, but shape {shape} needs {math.prod(shape)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()  # copy: writable, owns its memory


def encode_action(action: np.ndarray, wire: str, extra: dict[str, Any]) -> Any:
    """The JSON value answering a request that came as `wire`.

    plain: `{"action": [7 floats], **extra}`.
    json_numpy: the same object plus json_numpy's keys (`__numpy__`, `dtype`, `shape`) of the float32
    action, so OpenVLA's client (`requests.post(...).json()` under `json_numpy.patch()`) reads a numpy
    array, as from OpenVLA's own server, while any other client still reads `["action"]`.
    double-encoded: a JSON string holding the json_numpy encoding (OpenVLA's server answers
    `json_numpy.dumps(action)`; its client calls `json_numpy.loads(response.json())`).
    """
    action = np.ascontiguousarray(action, dtype=np.float32)
    encoded = {"__numpy__": base64.b64encode(action.tobytes()).decode(), "dtype": "<f4", "shape": list(action.shape)}
    if wire == DOUBLE_ENCODED:
        return json.dumps(encoded)
    body = {"action": action.tolist(), **extra}
    return {**encoded, **body} if wire == JSON_NUMPY else body


def _check_size(height: int, width: int, limits: Limits) -> None:
    if height < 1 or width < 1:
        raise BadRequest(422, f"the image is empty ({height} x {width} pixels)")
    if max(height, width) > limits.max_image_side:
        raise BadRequest(413, f"the image is {height} x {width} pixels; at most {limits.max_image_side} pixels "
                              "a side are accepted")


def _b64(text: str, field: str) -> bytes:
    # A data URL ("data:image/png;base64,...") is what browsers and many clients produce: take its payload.
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, f"field '{field}' is not valid base64") from None


def _kind_name(dtype: np.dtype) -> str:
    return {"f": "float", "b": "bool", "U": "string", "S": "bytes", "O": "mixed/null"}.get(dtype.kind, str(dtype))


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
