"""Golden outputs: a fixed tiny VLA on fixed inputs must keep giving the stored logits, so that an
unintended change of the model's computation (sequence layout, positions, masking, projector, head,
preprocessing) is caught. Weights are set from a seeded generator, not by HF's initialisers, so a
change of transformers' random init does not trip it; a change of the model's structure does.

After an INTENDED change of the computation (or of tests/vla/vla_tiny.py), regenerate and commit:

    .venv/bin/python tests/vla/test_vla_golden.py --regenerate
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from vla_tiny import images, tiny_config

from lapa.vla import VLA

GOLDEN = Path(__file__).with_name("golden_logits.json")


def _golden_model() -> VLA:
    torch.manual_seed(0)
    m = VLA(tiny_config(attn_implementation="eager")).eval()
    norms = {id(mod.weight) for mod in m.modules()
             if (isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith("RMSNorm")) and mod.weight is not None}
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, p in sorted(m.named_parameters()):
            p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if id(p) in norms else 0.0))
    return m


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed token ids (not the tokenizer: it has tests of its own), one prompt right-padded."""
    input_ids = torch.tensor([[5, 300, 41, 977, 12, 3, 1500, 77], [9, 8, 2047, 650, 0, 0, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]])
    return images(2, size=48, seed=7), input_ids, attention_mask


def _compute() -> dict:
    m = _golden_model()
    with torch.no_grad():
        logits = m(*_inputs())  # [2, 4, 8]
    labels = torch.tensor([[0, 1, 2, 3], [7, 6, 5, 4]])
    return {"logits": logits.tolist(), "loss": m.loss(logits, labels).item()}


def test_logits_match_the_golden_values():
    golden = json.loads(GOLDEN.read_text())
    now = _compute()
    regenerate = "if the change was intended: .venv/bin/python tests/vla/test_vla_golden.py --regenerate"
    torch.testing.assert_close(torch.tensor(now["logits"]), torch.tensor(golden["logits"]), rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{m}\n{regenerate}")
    assert abs(now["loss"] - golden["loss"]) < 1e-4, regenerate
    assert torch.tensor(golden["logits"]).std() > 0.1  # the values discriminate (not all ~equal)


if __name__ == "__main__":
    if "--regenerate" not in sys.argv:
        sys.exit(__doc__)
    GOLDEN.write_text(json.dumps(_compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
