"""`lapa export`: ONNX (onnxruntime) and TorchScript graphs of a Stage 3 policy reproduce the eager model on
inputs they never saw (dynamic batch and prompt length), a failed parity publishes nothing, and an existing
output is kept unless overwrite=true."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lapa.cli import main
from lapa.policy.graph_export import PolicyGraph, example_inputs, load_graph
from lapa.policy.vla_policy import LAPAPolicy
from policy_exports import make_policy_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_policy_export(tmp_path_factory.mktemp("graph") / "export", chunk=2)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_reproduces_the_eager_policy(export, fmt, tmp_path, one_thread):
    out = tmp_path / fmt
    assert main(["export", f"policy={export}", f"format={fmt}", f"output={out}"]) == 0
    info = json.loads((out / "export_info.json").read_text())
    assert info["format"] == fmt and info["action_chunk"] == 2 and info["image_size"] == 64
    assert info["parity"]["bins_identical"] and info["parity"]["max_abs_logit_diff"] <= 1e-4
    assert {"tokenizer.json", "action_stats.json"} <= {p.name for p in out.iterdir()}
    # another batch size and other prompts than the example and the parity check used
    policy = LAPAPolicy.from_pretrained(export)
    images, ids, mask = example_inputs(policy, batch=5, seed=7)
    logits, bins = load_graph(out)(images.numpy(), ids.numpy(), mask.numpy())
    with torch.no_grad():
        ref_logits, ref_bins = PolicyGraph(policy)(images, ids, mask)
    assert logits.shape == (5, 14, 256) and np.abs(logits - ref_logits.numpy()).max() <= 1e-4
    np.testing.assert_array_equal(bins, ref_bins.numpy())
    # an existing output is kept without overwrite=true
    assert main(["export", f"policy={export}", f"format={fmt}", f"output={out}"]) == 2


def test_failed_parity_publishes_nothing(export, tmp_path, capsys, monkeypatch, one_thread):
    import lapa.policy.graph_export as ge

    real = ge.load_graph

    def off_by_a_little(directory):  # an exported graph whose logits are 1e-3 away from the eager ones
        run = real(directory)
        return lambda *a: (run(*a)[0] + 1e-3, run(*a)[1])

    monkeypatch.setattr(ge, "load_graph", off_by_a_little)
    out = tmp_path / "ts"
    assert main(["export", f"policy={export}", "format=torchscript", f"output={out}"]) == 1
    assert "parity FAILED" in capsys.readouterr().out and not out.exists()
    assert not list(tmp_path.glob(".ts*"))  # no temporary left behind
