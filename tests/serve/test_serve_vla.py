"""End to end: `lapa serve policy=EXPORT` in its own process serves a tiny real LAPAPolicy (a Stage 3 export
of the debug VLA, tests/policy_exports.py); its answers, alone and batched, equal the in-process
`predict_action`, /info carries the export's action statistics, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from serve_fakes import b64, file_bytes, image

import policy_exports
from lapa.policy import vla_policy

INSTRUCTIONS = ["pick up the red cube", "push the blue cylinder to the left of the green cube", "lift it"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lapa_serve_answers_what_the_policy_says_in_process(tmp_path, one_thread):
    import httpx

    export = policy_exports.make_policy_export(tmp_path / "export")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lapa.cli", "serve", f"policy={export}", f"port={port}",
                             "max_batch=4", "max_wait_ms=20", "device=cpu", "log_level=warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        policy = vla_policy.LAPAPolicy.from_pretrained(export, device="cpu")  # meanwhile, the reference
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"lapa serve exited: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "lapa serve did not come up within 120 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        images = [image(48 + 8 * i, 64, seed=i) for i in range(8)]
        texts = [INSTRUCTIONS[i % 3] for i in range(8)]
        png = httpx.post(f"{url}/act", json={"image": b64(file_bytes(images[0])), "instruction": texts[0]}, timeout=60)
        assert png.status_code == 200, png.text
        np.testing.assert_allclose(png.json()["action"], policy.predict_action(images[0], texts[0]), atol=1e-5)

        def post(i: int):
            return httpx.post(f"{url}/act", json={"image": images[i].tolist(), "instruction": texts[i]}, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        for i, answer in enumerate(answers):
            np.testing.assert_allclose(answer.json()["action"], policy.predict_action(images[i], texts[i]), atol=1e-5)
        assert max(a.json()["batch_size"] for a in answers) > 1  # they shared forward passes
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["action_layout"] == policy.info()["action_layout"] and len(info["action_layout"]) == 7
        assert info["info"]["action_stats"] == policy.info()["action_stats"] and info["batched"] is True
        bad = httpx.post(f"{url}/act", json={"image": images[0].tolist(), "instruction": ""}, timeout=10)
        assert bad.status_code == 422
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = proc.stdout.read()
    # uvicorn shuts down gracefully, then re-raises SIGTERM: the process ends by that signal (or 0)
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in output, output[-2000:]
