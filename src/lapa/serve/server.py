"""`lapa serve policy=DIR port=8000`: serve a policy over HTTP (FastAPI + uvicorn).

Loads the policy once (`lapa.policy.get_policy(DIR, device=..., dtype=...)`: a `lapa finetune` export,
or any name or export kind the registry resolves), runs one warm-up batch, then answers until Ctrl-C:

    POST /act     {"image": <base64 PNG/JPEG | nested uint8 lists [H][W][3] | json_numpy array>,
                   "instruction": "pick up the red block"}  or multipart (image file + instruction)
                  -> {"action": [dx, dy, dz, droll, dpitch, dyaw, gripper], "batch_size": n, "ms": t}
    GET  /health  GET /info

Concurrent requests share a forward pass (up to max_batch, or max_wait_ms of waiting). OpenVLA's deploy
client (json_numpy) works unchanged. Bad input gets a 4xx with a one-line reason. Usage: docs/serve.md.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lapa.config import ConfigError
from lapa.policy import Policy, UnknownPolicyError, get_policy
from lapa.serve.batcher import batch_fn, check_actions
from lapa.serve.serve_config import ServeConfig

log = logging.getLogger(__name__)

WARMUP_IMAGE_SIDE = 64  # a black frame; the policy resizes whatever it gets


def load(cfg: ServeConfig) -> Policy:
    """The policy `cfg.policy` names, or a ConfigError saying why not (one line)."""
    check_device(cfg.device)
    try:
        policy = get_policy(cfg.policy, device=cfg.device, dtype=cfg.dtype)
    except UnknownPolicyError as err:
        raise ConfigError(str(err)) from None
    except Exception as err:  # noqa: BLE001 (a broken or wrong export, a bad dtype: one line, not a traceback)
        message = " ".join(str(err).split())
        raise ConfigError(f"policy={cfg.policy!r}: cannot be loaded: {type(err).__name__}: {message}") from None
    if not callable(getattr(policy, "predict_action", None)):
        raise ConfigError(f"policy={cfg.policy!r}: {type(policy).__name__} has no predict_action")
    return policy


def check_device(device: str) -> None:
    """A CUDA device that this machine has, else a ConfigError (not an error deep inside the model's build)."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= count:
        raise ConfigError(f"device={device!r}: this machine has {count} CUDA device(s); use device=cpu or auto")


def check_address(cfg: ServeConfig) -> None:
    """HOST:PORT can be listened on, else a ConfigError (a port in use, a host that is not this machine)."""
    import socket

    try:
        infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(infos[0][4])
    except OSError as err:
        raise ConfigError(f"host={cfg.host!r} port={cfg.port}: cannot listen there: {err.strerror or err}") from None


def warm_up(policy: Policy, cfg: ServeConfig) -> float:
    """One full batch through the policy (first calls allocate and compile); seconds it took."""
    image = np.zeros((WARMUP_IMAGE_SIDE, WARMUP_IMAGE_SIDE, 3), np.uint8)
    t0 = time.perf_counter()
    check_actions(batch_fn(policy)([image] * cfg.max_batch, ["warm up"] * cfg.max_batch), cfg.max_batch)
    return time.perf_counter() - t0


def run(cfg: ServeConfig) -> int:
    """Serve `cfg.policy` on http://HOST:PORT until interrupted (Ctrl-C / SIGTERM stop it cleanly).

    POST /act takes JSON {"image": base64 PNG/JPEG | nested uint8 lists [H][W][3] | json_numpy array,
    "instruction": text} or multipart (image file + instruction) and answers {"action": [7 floats], ...};
    GET /health and GET /info describe the server and the policy. Concurrent requests are batched (up to
    max_batch, or max_wait_ms of waiting). Bad input gets a 4xx with a one-line reason. See docs/serve.md.
    """
    try:
        import uvicorn

        from lapa.serve.app import create_app
    except ImportError as err:
        raise ConfigError(f"lapa serve needs the serve extra ({err.name} is missing): "
                          "pip install 'lapa[serve]'") from None
    check_address(cfg)  # before the policy loads (minutes for a large one), not after
    policy = load(cfg)
    if cfg.warmup:
        log.info("warm-up batch of %d: %.2f s", cfg.max_batch, warm_up(policy, cfg))
    app = create_app(policy, cfg)
    log.info("serving %s on http://%s:%d (POST /act, GET /health, GET /info)", cfg.policy, cfg.host, cfg.port)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=cfg.log_level == "debug")
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises Ctrl-C: the normal way to stop
        log.info("stopped")
    return 0
