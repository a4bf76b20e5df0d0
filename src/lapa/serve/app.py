"""`create_app(policy, config) -> FastAPI`: the REST interface of a policy.

    POST /act      JSON or multipart (image file + instruction)  -> {"action": [7 floats], "batch_size": n, ...}
    GET  /health   {"status": "ok", ...batching statistics}       (503 when the batcher has died)
    GET  /info     the policy's description, action layout and statistics, and the server's limits

Errors answer `{"detail": "<one line>"}`: 400 unreadable body, 413 body or image too large, 415 a content
type other than JSON or multipart, 422 a field that is missing or wrong, 503 queue full, and 500 only
when the policy itself fails on a valid request. Every request is decoded and checked in full before it
reaches the batcher, so bad input never costs a forward pass and never fails someone else's batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lapa.serve.batcher import MicroBatcher, Overloaded, PolicyError, batch_fn
from lapa.serve.decode import (
    PLAIN,
    BadRequest,
    Decoded,
    Limits,
    check_instruction,
    decode_image_file,
    decode_json,
    encode_action,
)
from lapa.serve.serve_config import ServeConfig

log = logging.getLogger(__name__)

ACTION_LAYOUT = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")  # lapa.policy.Policy's action
INLINE_DECODE_BYTES = 64 * 1024  # larger bodies are decoded in a worker thread, off the event loop


def create_app(policy: Any, config: ServeConfig) -> FastAPI:
    """A FastAPI app serving `policy` (anything with `predict_action`; `predict_actions` is used for
    batches when present, `info()` for /info). The batcher starts and stops with the app's lifespan,
    so use it under uvicorn or as `with TestClient(app) as client`."""
    if not callable(getattr(policy, "predict_action", None)):
        raise TypeError(f"{type(policy).__name__} has no predict_action(image, instruction): not a policy")
    limits = config.limits()
    batcher = MicroBatcher(batch_fn(policy), config.max_batch, config.max_wait_ms, config.max_queue)
    description = describe(policy, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="lapa serve", description="A LAPA policy over HTTP: image + instruction -> 7-DoF action",
                  lifespan=lifespan)
    app.state.batcher, app.state.limits = batcher, limits

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.post("/act")
    async def act(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        batcher.incoming += 1  # one event loop: no lock needed
        try:
            decoded = await read_request(request, limits)
        finally:
            batcher.incoming -= 1
        try:
            action, batch_size = await batcher.submit(decoded.image, decoded.instruction)
        except Overloaded as err:
            return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})
        except PolicyError as err:
            return JSONResponse({"detail": f"the policy failed: {err}"}, status_code=500)
        extra = {"batch_size": batch_size, "ms": round(1000 * (time.perf_counter() - t0), 3)}
        return JSONResponse(encode_action(action, decoded.wire, extra))

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if batcher.alive else "dead", "queued": batcher.queued, **batcher.stats.as_dict()}
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/info")
    async def info() -> JSONResponse:
        return JSONResponse(description)

    return app


async def read_request(request: Request, limits: Limits) -> Decoded:
    """The checked image and instruction of a POST /act, or BadRequest (4xx)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "multipart/form-data"):
        raise BadRequest(415, f"content type {media or 'none'!r} is not accepted; send application/json or "
                              "multipart/form-data")
    body = await read_body(request, limits.max_body_bytes)
    try:
        if media == "application/json":
            if len(body) > INLINE_DECODE_BYTES:
                return await run_in_threadpool(decode_json, body, limits)
            return decode_json(body, limits)
        return await decode_multipart(request, body, limits)
    except BadRequest:
        raise
    except Exception as err:  # noqa: BLE001 (a request no rule foresaw is still the client's: 400, never 500)
        log.exception("unforeseen error while decoding a request")
        raise BadRequest(400, f"the request cannot be read: {type(err).__name__}: {err}"[:300]) from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `max_bytes` (a declared Content-Length that is
    too large is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > max_bytes:
            raise BadRequest(413, f"the body has {int(declared)} bytes; at most {max_bytes} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"the body has more than {max_bytes} bytes; at most {max_bytes} are accepted")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_multipart(request: Request, body: bytes, limits: Limits) -> Decoded:
    """multipart/form-data with an `image` part (a PNG/JPEG file) and an `instruction` part (text)."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    async def replay() -> dict:  # the body was read already (with its size limit): parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except (MultiPartException, HTTPException) as err:
        raise BadRequest(400, f"the multipart body cannot be parsed: {getattr(err, 'detail', None) or err}") from None
    try:
        unknown = sorted(set(form.keys()) - {"image", "instruction", "unnorm_key"})
        if unknown:
            raise BadRequest(422, f"unknown form field(s) {unknown}; the fields are 'image' (a file) and 'instruction'")
        image, instruction = form.get("image"), form.get("instruction")
        if image is None:
            raise BadRequest(422, "missing form field 'image' (a PNG or JPEG file)")
        if not isinstance(image, UploadFile):
            raise BadRequest(422, "form field 'image' must be a file upload (a PNG or JPEG file)")
        if isinstance(instruction, UploadFile):
            raise BadRequest(422, "form field 'instruction' must be text, not a file")
        text = check_instruction(instruction, limits)
        data = await image.read()
        return Decoded(await run_in_threadpool(decode_image_file, data, limits), text, PLAIN)
    finally:
        await form.close()


def describe(policy: Any, config: ServeConfig) -> dict[str, Any]:
    """/info's answer, computed once: the policy's own `info()` when it has one (made JSON-safe)."""
    own: Any = None
    if callable(getattr(policy, "info", None)):
        try:
            own = json.loads(json.dumps(policy.info(), default=_jsonable))
        except Exception as err:  # noqa: BLE001 (a description must not stop the server)
            own = {"error": f"info() failed: {type(err).__name__}: {err}"}
    layout = own.get("action_layout") if isinstance(own, dict) else None
    return {"policy": config.policy, "class": f"{type(policy).__module__}.{type(policy).__qualname__}",
            "action_layout": list(layout or ACTION_LAYOUT),
            "batched": callable(getattr(policy, "predict_actions", None)), "info": own,
            "serve": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "max_queue": config.max_queue,
                      "max_body_bytes": config.limits().max_body_bytes, "max_image_side": config.max_image_side,
                      "max_instruction_chars": config.max_instruction_chars,
                      "inputs": ["application/json: image = base64 PNG/JPEG | nested uint8 lists [H][W][3] | "
                                 "json_numpy array; instruction = text",
                                 "multipart/form-data: image = PNG/JPEG file; instruction = text"]}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
