"""`LAPAPolicy` (lapa.policy.vla_policy): a Stage 3 export through the registry, one forward pass per call,
frames of any size resized as in training, batches equal to single calls, action-chunk execution
(first, open loop, temporal ensembling), and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lapa.data.transforms import ensure_size
from lapa.policy import VLA_EXPORT_KIND, get_policy
from lapa.policy.vla_policy import LAPAPolicy
from lapa.vla import VLA
from lapa.vla.action_tokenizer import ActionTokenizer
from lapa.vla.export import KIND
from policy_exports import make_policy_export

INSTRUCTIONS = ["pick up the red cube", "push the blue cylinder to the left of the green cube", "lift it"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_policy_export(tmp_path_factory.mktemp("policy") / "export")


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    return make_policy_export(tmp_path_factory.mktemp("chunked") / "export", chunk=3, seed=1)


def frames(n: int, h: int = 90, w: int = 120, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


class CountingModel(torch.nn.Module):
    """Wraps the VLA and counts its forward passes."""

    def __init__(self, model: VLA) -> None:
        super().__init__()
        self.inner, self.calls = model, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)

    def tokenize(self, instructions):
        return self.inner.tokenize(instructions)


def test_the_registry_builds_it_and_it_predicts_what_the_model_says(export, one_thread):
    assert VLA_EXPORT_KIND == KIND
    policy = get_policy(str(export), oracle=None, sim=None)  # options meant for other policies are ignored
    assert isinstance(policy, LAPAPolicy) and policy.chunk == 1 and policy.image_size == 64
    assert policy.device.type == "cpu" and policy.dtype == torch.float32  # "auto" without CUDA
    image = frames(1)[0]
    action = policy.predict_action(image, INSTRUCTIONS[0])
    assert action.shape == (7,) and action.dtype == np.float32
    # by hand: the training resize, the model, the most likely bins, de-binned
    model, tok = VLA.from_pretrained(export), ActionTokenizer.load(export)
    pixels = torch.from_numpy(np.array(ensure_size(image, 64)))[None]
    with torch.no_grad():
        bins = model(pixels, **model.tokenize(INSTRUCTIONS[:1])).argmax(-1)  # [1, 7]
    np.testing.assert_array_equal(action, tok.decode(bins.numpy())[0])
    json.dumps(policy.info())  # serialisable, for the server
    assert policy.info()["action_layout"][-1] == "gripper" and policy.info()["action_chunk"] == 1


def test_a_batch_equals_single_calls_whatever_the_sizes(export, one_thread):
    policy = LAPAPolicy.from_pretrained(export)
    images = frames(2, 90, 120) + frames(1, 64, 64, seed=3)  # 4:3 frames and one already at 64 px
    batch = policy.predict_actions(images, INSTRUCTIONS)
    singles = np.stack([policy.predict_action(i, t) for i, t in zip(images, INSTRUCTIONS)])
    assert batch.shape == (3, 7)
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    assert len({tuple(row) for row in batch}) > 1  # different inputs, different actions


def test_chunk_execution_first_open_loop_and_ensemble(chunked, one_thread):
    image, text = frames(1)[0], INSTRUCTIONS[1]
    policy = LAPAPolicy.from_pretrained(chunked, execution="open_loop")
    chunk = policy.predict_chunks([image], [text])[0]  # [3, 7]
    assert chunk.shape == (3, 7)
    policy.model = counting = CountingModel(policy.model)
    got = [policy.predict_action(image, text) for _ in range(4)]
    np.testing.assert_array_equal(np.stack(got[:3]), chunk)  # the whole chunk, one pass
    assert counting.calls == 2  # the 4th step needed a new chunk
    policy.reset()
    policy.predict_action(image, text)
    assert counting.calls == 3  # reset drops the rest of the chunk

    first = LAPAPolicy.from_pretrained(chunked, execution="first")
    np.testing.assert_array_equal(first.predict_action(image, text), chunk[0])

    ens = LAPAPolicy.from_pretrained(chunked, execution="ensemble", ensemble_decay=0.5)
    seq = frames(3, seed=7)
    chunks = [ens.predict_chunks([f], [text])[0] for f in seq]
    out = [ens.predict_action(f, text) for f in seq]
    np.testing.assert_allclose(out[0], chunks[0][0], atol=1e-6)
    w = np.exp(-0.5 * np.arange(3))  # oldest first
    expected = (w[0] * chunks[0][2] + w[1] * chunks[1][1] + w[2] * chunks[2][0]) / w.sum()
    np.testing.assert_allclose(out[2], expected, atol=1e-6)


def test_clear_errors(export, tmp_path, one_thread):
    policy = LAPAPolicy.from_pretrained(export)
    with pytest.raises(ValueError, match="uint8"):
        policy.predict_action(np.zeros((8, 8, 3), np.float32), "lift it")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        policy.predict_action(np.zeros((8, 8), np.uint8), "lift it")
    with pytest.raises(ValueError, match="non-empty"):
        policy.predict_action(frames(1)[0], "  ")
    with pytest.raises(ValueError, match="execution"):
        LAPAPolicy.from_pretrained(export, execution="sometimes")
    from lapa.vla import load_vla_config

    s2 = VLA(load_vla_config("vla_debug")).save_pretrained(tmp_path / "stage2")
    with pytest.raises(ValueError, match="Stage 2 export.*finetune it first"):
        get_policy(str(s2))
    bare = tmp_path / "bare"
    VLA.from_pretrained(export).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="action_stats.json"):
        LAPAPolicy.from_pretrained(bare)
