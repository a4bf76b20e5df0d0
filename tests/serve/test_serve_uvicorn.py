"""A real uvicorn server on a free 127.0.0.1 port (in a thread): concurrent HTTP clients share batches and
get their own answers, garbage that is not even HTTP does not kill it, an oversized upload is refused, and
it shuts down cleanly. And `lapa serve`'s config errors are one line with exit status 2."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fakes import RecordingPolicy, image

from lapa.cli import main


@pytest.fixture
def server():
    """(base URL, policy) of a uvicorn server in a thread, stopped at the end of the test."""
    import uvicorn

    from lapa.serve.app import create_app
    from lapa.serve.serve_config import ServeConfig

    policy = RecordingPolicy(delay=0.03)
    app = create_app(policy, ServeConfig(policy="fake", max_batch=8, max_wait_ms=10, max_body_mb=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", policy
    srv.should_exit = True
    thread.join(10)
    sock.close()
    assert not thread.is_alive(), "the server did not stop"


def test_a_real_server_batches_concurrent_clients_and_survives_garbage(server):
    import httpx

    url, policy = server
    images = [image(seed=i) for i in range(32)]

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{url}/act", json={"image": images[i].tolist(), "instruction": f"task {i}"}, timeout=30)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(post, range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    for i, r in enumerate(responses):
        assert r.json()["action"] == policy.predict_action(images[i], f"task {i}").tolist()
    assert sum(policy.sizes) == 32 and max(policy.sizes) > 1 and not policy.overlapped

    host, port = url.removeprefix("http://").split(":")
    for garbage in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b"NOT HTTP AT ALL\r\n\r\n",
                    b"POST /act HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{", b"GET / HTTP/1.1\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as raw:  # a TLS hello, junk, a lie, a stall
            raw.sendall(garbage)
            raw.settimeout(2)
            try:
                raw.recv(1024)
            except (TimeoutError, ConnectionError):
                pass
    big = httpx.post(f"{url}/act", content=b"[" + b"0," * 600_000 + b"0]", timeout=30,
                     headers={"content-type": "application/json"})
    assert big.status_code == 413
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert post(0).json()["action"] == responses[0].json()["action"]


def test_config_errors_are_one_line(capsys):
    assert main(["serve"]) == 2
    assert "policy='': set policy=DIR" in capsys.readouterr().err
    assert main(["serve", "policy=/no/such/dir"]) == 2
    assert "not a registered policy" in capsys.readouterr().err
    assert main(["serve", "policy=x", "max_batch=0"]) == 2
    assert "max_batch=0: must be >= 1" in capsys.readouterr().err
    assert main(["serve", "policy=x", "port=70000"]) == 2
    assert main(["serve", "policy=x", "device=gpu"]) == 2
    assert "must be auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    assert main(["serve", "policy=x", "device=cuda:99"]) == 2
    assert "CUDA device(s)" in capsys.readouterr().err
    assert main(["serve", "--help"]) == 0
    assert "POST /act" in capsys.readouterr().out


def test_the_cli_does_not_import_the_web_stack():
    import subprocess
    import sys

    code = ("import sys, lapa.cli, lapa.serve, lapa.serve.server, lapa.serve.serve_config; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
