"""The app (lapa.serve.app) under FastAPI's TestClient: every payload form answers what the policy says
in-process, OpenVLA's client reads its answer, concurrent requests share batches, bad input of every kind is
a 4xx and never reaches the policy, a failing policy fails only its batch, and the server keeps serving."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_fakes import FailingPolicy, MeanPolicy, RecordingPolicy, b64, file_bytes, image, jn_dumps, jn_loads

IMAGE = image()
INSTRUCTION = "put the red cube next to the blue cylinder"


def expected(policy=None, img=IMAGE, text=INSTRUCTION) -> list[float]:
    return (policy or MeanPolicy()).predict_action(img, text).tolist()


@pytest.mark.parametrize("policy", [MeanPolicy(), RecordingPolicy()], ids=["single", "batched"])
def test_every_form_answers_the_in_process_action(serve, policy):
    with serve(policy) as client:
        answers = [
            client.post("/act", json={"image": b64(file_bytes(IMAGE)), "instruction": INSTRUCTION}),
            client.post("/act", json={"image": IMAGE.tolist(), "instruction": INSTRUCTION}),
            client.post("/act", files={"image": ("frame.png", file_bytes(IMAGE), "image/png")},
                        data={"instruction": INSTRUCTION}),
        ]
        for response in answers:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["action"] == expected() and body["batch_size"] == 1 and body["ms"] >= 0
        other = client.post("/act", json={"image": image(40, 50, seed=3).tolist(), "instruction": "lift"}).json()
        assert other["action"] == expected(img=image(40, 50, seed=3), text="lift")


def test_openvla_clients_get_what_openvla_servers_answer(serve):
    with serve(RecordingPolicy()) as client:
        # the deploy client: requests.post(url, json={"image": ndarray, ...}) under json_numpy.patch()
        response = client.post("/act", content=jn_dumps({"image": IMAGE, "instruction": INSTRUCTION,
                                                         "unnorm_key": "bridge_orig"}),
                               headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        action = jn_loads(response.text)  # what `.json()` gives that client
        assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.tolist() == expected()
        assert response.json()["action"] == expected()  # and any other client still reads "action"
        # the double-encoded form: {"encoded": json_numpy.dumps(payload)} -> json_numpy.loads(response.json())
        response = client.post("/act", json={"encoded": jn_dumps({"image": IMAGE, "instruction": INSTRUCTION})})
        assert response.status_code == 200 and jn_loads(response.json()).tolist() == expected()


def test_health_and_info(serve):
    with serve(RecordingPolicy(), max_batch=4) as client:
        client.post("/act", json={"image": IMAGE.tolist(), "instruction": INSTRUCTION})
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["requests"] == 1 and health["batches"] == 1
        info = client.get("/info").json()
        assert info["action_layout"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
        assert info["info"] == {"name": "recording", "delay": 0.0, "action_stats": {"mean": [0.0] * 7}}
        assert info["batched"] is True and info["serve"]["max_batch"] == 4
    with serve(MeanPolicy()) as client:  # a policy without info() or predict_actions
        info = client.get("/info").json()
        assert info["info"] is None and info["batched"] is False and len(info["action_layout"]) == 7


def test_concurrent_requests_share_batches(serve):
    policy = RecordingPolicy(delay=0.05)  # a forward pass with a fixed cost
    images = [image(seed=i) for i in range(24)]
    with serve(policy, max_batch=8, max_wait_ms=20) as client:
        def post(i: int):
            return client.post("/act", json={"image": images[i].tolist(), "instruction": f"task {i}"})

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(post, range(24)))
    assert all(r.status_code == 200 for r in responses)
    for i, r in enumerate(responses):  # each answer is its own request's, whatever batch it rode in
        assert r.json()["action"] == expected(img=images[i], text=f"task {i}")
    assert sum(policy.sizes) == 24 and max(policy.sizes) > 1 and max(policy.sizes) <= 8
    assert len(policy.sizes) < 24 and not policy.overlapped  # fewer calls than requests, never two at once


MALFORMED = [
    dict(content=b"{not json", headers={"content-type": "application/json"}),
    dict(content=b"", headers={"content-type": "application/json"}),
    dict(json={"image": "not base64!", "instruction": "x"}),
    dict(json={"image": [[1, 2, 3]], "instruction": "x"}),
    dict(json={"image": IMAGE.tolist(), "instruction": ""}),
    dict(json={"image": IMAGE.tolist()}),
    dict(json={"instruction": "x"}),
    dict(json={"image": (IMAGE / 2.0).tolist(), "instruction": "x"}),
    dict(json=["image", "instruction"]),
    dict(content=b"image=1&instruction=x", headers={"content-type": "application/x-www-form-urlencoded"}),
    dict(content=b"hello", headers={"content-type": "text/plain"}),
    dict(content=b"\x00\x01", headers={}),
    dict(files={"image": ("a.png", b"not a png", "image/png")}, data={"instruction": "x"}),
    dict(files={"image": ("a.png", file_bytes(IMAGE), "image/png")}),
    dict(files={"image": ("a.png", file_bytes(IMAGE), "image/png")}, data={"instruction": "  "}),
    dict(files={"other": ("a.png", file_bytes(IMAGE), "image/png")}, data={"instruction": "x"}),
    dict(data={"image": "abc", "instruction": "x"}, files={"f": ("x", b"x")}),
    dict(content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=xyz"}),
    dict(content=b"abc", headers={"content-type": "multipart/form-data"}),  # no boundary
    dict(json={"image": np.zeros((5000, 1, 3), int).tolist(), "instruction": "x"}),  # 413: too tall
]


def test_bad_requests_get_4xx_and_never_reach_the_policy(serve):
    policy = RecordingPolicy()
    with serve(policy, max_image_side=4096) as client:
        for kwargs in MALFORMED:
            response = client.post("/act", **kwargs)
            assert 400 <= response.status_code < 500, (kwargs, response.status_code, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, (str, list)) and detail, response.text
        assert client.get("/act").status_code == 405 and client.get("/nope").status_code == 404
        assert policy.sizes == []


def test_size_limits_and_content_types(serve):
    with serve(RecordingPolicy(), max_body_mb=0.01, max_image_side=16) as client:
        big = client.post("/act", content=b"x" * 20000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "at most 10485 are accepted" in big.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(20):
                yield b"x" * 1000

        streamed = client.post("/act", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        tall = client.post("/act", json={"image": b64(file_bytes(image(17, 4))), "instruction": "x"})
        assert tall.status_code == 413 and "at most 16 pixels" in tall.json()["detail"]
        kind = client.post("/act", content=b"x", headers={"content-type": "image/png"})
        assert kind.status_code == 415 and "application/json" in kind.json()["detail"]
        ok = client.post("/act", json={"image": image(16, 16).tolist(), "instruction": "x"})
        assert ok.status_code == 200


def test_two_hundred_malformed_requests_in_a_row_leave_it_serving(serve):
    with serve(RecordingPolicy(), max_image_side=4096) as client:
        statuses = [client.post("/act", **MALFORMED[i % len(MALFORMED)]).status_code for i in range(200)]
        assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
        assert client.get("/health").json()["status"] == "ok"
        good = client.post("/act", json={"image": IMAGE.tolist(), "instruction": INSTRUCTION})
        assert good.status_code == 200 and good.json()["action"] == expected()


def test_a_failing_policy_fails_its_batch_only(serve):
    with serve(FailingPolicy(), max_batch=1) as client:
        boom = client.post("/act", json={"image": IMAGE.tolist(), "instruction": "boom"})
        assert boom.status_code == 500 and "kaboom" in boom.json()["detail"]
        shape = client.post("/act", json={"image": IMAGE.tolist(), "instruction": "shape"})
        assert shape.status_code == 500 and "expected [1, 7]" in shape.json()["detail"]
        good = client.post("/act", json={"image": IMAGE.tolist(), "instruction": INSTRUCTION})
        assert good.status_code == 200 and good.json()["action"] == expected()
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["failed_batches"] == 2


def test_not_a_policy_is_refused():
    from lapa.serve.app import create_app
    from lapa.serve.serve_config import ServeConfig

    with pytest.raises(TypeError, match="no predict_action"):
        create_app(object(), ServeConfig(policy="x"))


def test_answers_are_exact_float32_after_json(serve):
    class Awkward(MeanPolicy):
        def predict_action(self, image, instruction):
            return np.array([1 / 3, -2 / 7, 1e-8, 123.456, np.pi, -np.e, 0.1], np.float32)

    with serve(Awkward()) as client:
        body = client.post("/act", json={"image": IMAGE.tolist(), "instruction": "x"}).json()
    assert np.array_equal(np.asarray(body["action"], np.float32), Awkward().predict_action(IMAGE, "x"))
    assert json.dumps(body)  # plain JSON


def test_a_lone_request_does_not_wait_for_company(serve):
    import time

    with serve(RecordingPolicy(), max_wait_ms=1000) as client:  # waiting is only for requests on their way
        t0 = time.perf_counter()
        for _ in range(3):
            assert client.post("/act", json={"image": IMAGE.tolist(), "instruction": "x"}).status_code == 200
        assert time.perf_counter() - t0 < 1.5
