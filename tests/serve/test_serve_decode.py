"""Request payloads -> (image, instruction): every accepted form gives the same pixels, and every bad input
is a BadRequest with a 4xx status and a one-line message (lapa.serve.decode, no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_fakes import b64, file_bytes, image, jn_dumps, jn_loads

from lapa.serve.decode import (
    DOUBLE_ENCODED,
    JSON_NUMPY,
    PLAIN,
    BadRequest,
    Limits,
    decode_json,
    encode_action,
)

LIMITS = Limits(max_body_bytes=2**20, max_image_side=64, max_instruction_chars=50)
IMAGE = image()


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize("form", ["png", "data_url", "nested", "json_numpy", "json_numpy_1x", "double"])
def test_every_form_gives_the_same_pixels(form):
    png = b64(file_bytes(IMAGE))
    raw = {"png": body(image=png, instruction=" lift it "),
           "data_url": body(image="data:image/png;base64," + png, instruction="lift it"),
           "nested": body(image=IMAGE.tolist(), instruction="lift it"),
           "json_numpy": jn_dumps({"image": IMAGE, "instruction": "lift it", "unnorm_key": "bridge_orig"}).encode(),
           "json_numpy_1x": body(image={"__numpy__": b64(IMAGE.tobytes()), "dtype": "uint8", "shape": [24, 32, 3]},
                                 instruction="lift it"),
           "double": body(encoded=jn_dumps({"image": IMAGE, "instruction": "lift it"}))}[form]
    decoded = decode_json(raw, LIMITS)
    assert decoded.image.dtype == np.uint8 and decoded.image.flags.c_contiguous and decoded.image.flags.writeable
    np.testing.assert_array_equal(decoded.image, IMAGE)
    assert decoded.instruction == "lift it"
    assert decoded.wire == {"json_numpy": JSON_NUMPY, "json_numpy_1x": JSON_NUMPY, "double": DOUBLE_ENCODED}.get(
        form, PLAIN)


def test_jpeg_grey_and_rgba_files_become_rgb():
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 32, 3)).copy()
    jpeg = decode_json(body(image=b64(file_bytes(smooth, "JPEG", quality=95)), instruction="x"), LIMITS).image
    assert jpeg.shape == smooth.shape and np.abs(jpeg.astype(int) - smooth).max() < 8  # lossy, but the image
    grey = decode_json(body(image=b64(file_bytes(IMAGE[..., 0])), instruction="x"), LIMITS).image
    np.testing.assert_array_equal(grey, np.repeat(IMAGE[..., :1], 3, axis=2))
    rgba = np.concatenate([IMAGE, np.full((24, 32, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_json(body(image=b64(file_bytes(rgba)), instruction="x"), LIMITS).image, IMAGE)


def _gif() -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, format="GIF")
    return b64(buf.getvalue())


BAD = {
    "empty body": (b"", 400, "empty"),
    "not json": (b"{image: 1", 400, "not valid JSON"),
    "not utf-8": (b"\xff\xfe{", 400, "not valid JSON"),
    "a list": (b"[1, 2]", 422, "must be an object"),
    "no image": (body(instruction="x"), 422, "missing field 'image'"),
    "no instruction": (body(image=IMAGE.tolist()), 422, "missing field 'instruction'"),
    "empty instruction": (body(image=IMAGE.tolist(), instruction="  "), 422, "'instruction' is empty"),
    "instruction not text": (body(image=IMAGE.tolist(), instruction=3), 422, "must be a string"),
    "instruction too long": (body(image=IMAGE.tolist(), instruction="x" * 51), 422, "at most 50"),
    "unknown field": (body(image=IMAGE.tolist(), instruction="x", instr="y"), 422, "unknown field"),
    "image a number": (body(image=3, instruction="x"), 422, "must be a base64"),
    "not base64": (body(image="%%%not base64%%%", instruction="x"), 422, "not valid base64"),
    "base64 of text": (body(image=b64(b"hello world"), instruction="x"), 422, "cannot be decoded"),
    "empty base64": (body(image="", instruction="x"), 422, "empty"),
    "truncated png": (body(image=b64(file_bytes(IMAGE)[:60]), instruction="x"), 422, "cannot be decoded"),
    "a gif": (body(image=_gif(), instruction="x"), 422, "send PNG or JPEG"),
    "png too large": (body(image=b64(file_bytes(image(65, 8))), instruction="x"), 413, "at most 64 pixels"),
    "2-d lists": (body(image=[[1, 2], [3, 4]], instruction="x"), 422, "shape [H, W, 3]"),
    "4 channels": (body(image=np.zeros((2, 2, 4), int).tolist(), instruction="x"), 422, "shape [H, W, 3]"),
    "ragged lists": (body(image=[[[1, 2, 3]], [[1, 2]]], instruction="x"), 422, "rectangular"),
    "floats": (body(image=(IMAGE / 255).tolist(), instruction="x"), 422, "integers 0..255"),
    "booleans": (body(image=[[[True, False, True]]], instruction="x"), 422, "integers 0..255"),
    "nulls": (body(image=[[[None, 1, 2]]], instruction="x"), 422, "integers 0..255"),
    "strings": (body(image=[[["a", "b", "c"]]], instruction="x"), 422, "integers 0..255"),
    "out of range": (body(image=[[[0, 256, 3]]], instruction="x"), 422, "0..255"),
    "negative": (body(image=[[[0, -1, 3]]], instruction="x"), 422, "0..255"),
    "huge ints": (body(image=[[[10**30, 1, 2]]], instruction="x"), 422, "integers 0..255"),
    "empty lists": (body(image=[], instruction="x"), 422, "shape"),
    "zero-width": (body(image=[[]], instruction="x"), 422, "shape"),
    "lists too large": (body(image=np.zeros((65, 1, 3), int).tolist(), instruction="x"), 413, "at most 64"),
    "jn float32": (jn_dumps({"image": IMAGE.astype(np.float32), "instruction": "x"}).encode(), 422, "dtype uint8"),
    "jn 2-d": (jn_dumps({"image": IMAGE[..., 0], "instruction": "x"}).encode(), 422, "shape [H, W, 3]"),
    "jn short data": (body(image={"__numpy__": b64(b"abc"), "dtype": "|u1", "shape": [2, 2, 3]}, instruction="x"),
                      422, "needs 12"),
    "jn bad shape": (body(image={"__numpy__": "", "dtype": "|u1", "shape": "big"}, instruction="x"), 422, "shape"),
    "jn extra key": (body(image={"__numpy__": "", "dtype": "|u1", "shape": [1, 1, 3], "x": 1}, instruction="x"),
                     422, "unknown key"),
    "jn too large": (body(image={"__numpy__": "", "dtype": "|u1", "shape": [10**9, 1, 3]}, instruction="x"),
                     413, "at most 64"),
    "encoded not a string": (body(encoded={"image": 1}), 422, "double-encoded"),
    "encoded with company": (body(encoded="{}", image=1), 422, "double-encoded"),
    "encoded not json": (body(encoded="{oops"), 422, "not a JSON string"),
    "deep nesting": (b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_with_a_one_line_message(case):
    raw, status, words = BAD[case]
    with pytest.raises(BadRequest) as info:
        decode_json(raw, LIMITS)
    assert info.value.status == status, info.value.message
    assert words in info.value.message and "\n" not in info.value.message and len(info.value.message) < 300


def test_answers_take_the_form_the_client_expects():
    action = np.linspace(-1, 1, 7, dtype=np.float32)
    plain = encode_action(action, PLAIN, {"batch_size": 2})
    assert plain == {"action": action.tolist(), "batch_size": 2}
    assert np.array_equal(np.float32(json.loads(json.dumps(plain))["action"]), action)  # exact after JSON
    both = json.dumps(encode_action(action, JSON_NUMPY, {}))
    assert json.loads(both)["action"] == action.tolist()  # any client reads "action" ...
    decoded = jn_loads(both)  # ... and json_numpy's reads an array, as from OpenVLA's server
    assert isinstance(decoded, np.ndarray) and decoded.dtype == np.float32 and np.array_equal(decoded, action)
    double = json.dumps(encode_action(action, DOUBLE_ENCODED, {}))
    assert np.array_equal(jn_loads(json.loads(double)), action)  # json_numpy.loads(response.json())
