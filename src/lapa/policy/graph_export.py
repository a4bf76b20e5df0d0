"""`lapa export policy=DIR format=onnx|torchscript`: a Stage 3 policy's forward pass as a graph file, for
runtimes without Python's model code (onnxruntime, TensorRT, libtorch), with its parity checked.

The graph (`PolicyGraph`, float32 on CPU; batch and prompt length are dynamic):

    images          uint8 [B, S, S, 3]   frames already at the policy's image size S (`info.image_size`:
                                         shorter side to S, centre crop, as `LAPAPolicy.preprocess` does)
    input_ids       int64 [B, L]         the prompt's tokens (the exported tokenizer, the prompt template in
    attention_mask  int64 [B, L]         export_info.json; either side padded)
 -> logits          float32 [B, 7K, N]   N = action bins (256), K = action chunk
    bins            int64 [B, 7K]        their arg-max; de-bin with action_stats.json (`ActionTokenizer`)

What stays outside the graph: the tokenizer (text), the resize of camera frames, and the de-binning
(a table lookup). The command writes OUTPUT/ (default DIR/<format>/) atomically: model.onnx or model.pt,
the tokenizer files, action_stats.json and export_info.json (formats, shapes, parity). Parity is checked
on inputs the export never saw (another batch size, other prompts and images): the largest absolute logit
difference from the eager model must be <= `tolerance` (1e-4) and every bin identical, else the command
fails (exit 1) and publishes nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lapa.config import ConfigError, require
from lapa.io import atomic_dir
from lapa.policy.vla_policy import LAPAPolicy

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
GRAPH_KIND = "lapa-vla-graph"
INPUTS, OUTPUTS = ("images", "input_ids", "attention_mask"), ("logits", "bins")
# Prompts of different lengths, for the example and the parity inputs (padding must be exercised).
PROMPTS = ["pick up the red cube", "push the blue cylinder to the left of the green cube",
           "put the yellow cube on the purple cylinder", "lift it"]


class PolicyGraph(nn.Module):
    """The policy's VLA as one function of tensors: (images, input_ids, attention_mask) -> (logits, bins)."""

    def __init__(self, policy: LAPAPolicy) -> None:
        super().__init__()
        self.model = policy.model

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images, input_ids, attention_mask)  # [B, 7K, N]
        return logits, logits.argmax(-1)


@dataclass
class ExportConfig:
    """Settings of `lapa export` (conf/export.yaml)."""

    policy: str = ""  # a Stage 3 export directory (lapa finetune's export/)
    format: str = "onnx"  # onnx | torchscript
    output: str = ""  # "": POLICY/<format>
    tolerance: float = 1e-4  # largest allowed |logit - eager logit|
    overwrite: bool = False

    def __post_init__(self) -> None:
        require(bool(self.policy), "policy", self.policy, "set policy=DIR (a Stage 3 export)")
        require(self.format in FORMATS, "format", self.format, f"must be one of {sorted(FORMATS)}")
        require(self.tolerance > 0, "tolerance", self.tolerance, "must be > 0")

    def check_inputs(self) -> None:
        if not (Path(self.policy) / "info.json").is_file():
            raise ConfigError(f"policy={self.policy}: not an export directory (no info.json)")
        out = self.output_dir()
        if out.exists() and not self.overwrite:
            raise ConfigError(f"output={out} exists; set overwrite=true to replace it")

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path(self.policy) / self.format


def example_inputs(policy: LAPAPolicy, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random frames at the policy's size and tokenised prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    S = policy.image_size
    images = torch.randint(0, 256, (batch, S, S, 3), dtype=torch.uint8, generator=g)
    prompts = [PROMPTS[(seed + i) % len(PROMPTS)] for i in range(batch)]
    enc = policy.model.tokenize(prompts)
    return images, enc["input_ids"].long(), enc["attention_mask"].long()


def export_graph(graph: PolicyGraph, example: tuple[torch.Tensor, ...], fmt: str, path: Path) -> None:
    """Write `graph` traced on `example` to `path` (dynamic batch and prompt length)."""
    if fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=1024)
        tokens = torch.export.Dim("tokens", min=1, max=4096)
        torch.onnx.export(graph, example, str(path), dynamo=True, input_names=list(INPUTS),
                          output_names=list(OUTPUTS), external_data=False,
                          dynamic_shapes={"images": {0: batch}, "input_ids": {0: batch, 1: tokens},
                                          "attention_mask": {0: batch, 1: tokens}})
    else:
        with torch.no_grad():
            traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path))


def load_graph(directory: str | Path) -> Any:
    """A callable (images uint8 [B,S,S,3], input_ids, attention_mask as numpy) -> (logits, bins) numpy
    for an exported graph directory (onnxruntime for ONNX, torch.jit for TorchScript)."""
    directory = Path(directory)
    info = json.loads((directory / "export_info.json").read_text())
    path = directory / FORMATS[info["format"]]
    if info["format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images, ids, mask: tuple(session.run(None, {"images": images, "input_ids": ids,
                                                                  "attention_mask": mask}))
    module = torch.jit.load(str(path)).eval()

    def run_torchscript(images: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, bins = module(torch.from_numpy(images), torch.from_numpy(ids), torch.from_numpy(mask))
        return logits.numpy(), bins.numpy()

    return run_torchscript


def parity(graph: PolicyGraph, directory: Path, policy: LAPAPolicy) -> dict[str, Any]:
    """Exported vs eager on fresh inputs (3 samples, prompts of other lengths than the example's)."""
    run_exported = load_graph(directory)
    images, ids, mask = example_inputs(policy, batch=3, seed=1)
    with torch.no_grad():
        logits, bins = graph(images, ids, mask)
    got_logits, got_bins = run_exported(images.numpy(), ids.numpy(), mask.numpy())
    diff = float(np.abs(got_logits - logits.numpy()).max())
    return {"max_abs_logit_diff": diff, "bins_identical": bool(np.array_equal(got_bins, bins.numpy())),
            "samples": 3}


def run(cfg: ExportConfig) -> int:
    """Export policy=DIR's forward pass as format=onnx|torchscript into output=DIR, parity checked."""
    t0 = time.perf_counter()
    policy = LAPAPolicy.from_pretrained(cfg.policy, device="cpu", dtype="float32")
    graph = PolicyGraph(policy).eval()
    out = cfg.output_dir()
    print(f"lapa export: {cfg.policy} -> {out} ({cfg.format})")
    try:
        check = _write(cfg, policy, graph, out)
    except ExportParityError as err:
        print(err)
        return 1
    print(f"  parity on fresh inputs: max |logit - eager| = {check['max_abs_logit_diff']:.2e} (<= {cfg.tolerance}), "
          f"bins identical: {check['bins_identical']}; {time.perf_counter() - t0:.1f} s")
    print(f"  wrote {out}")
    return 0


def _write(cfg: ExportConfig, policy: LAPAPolicy, graph: PolicyGraph, out: Path) -> dict[str, Any]:
    """The graph, tokenizer, statistics and export_info.json into `out`, published only if parity holds."""
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        export_graph(graph, example_inputs(policy, batch=2, seed=0), cfg.format, tmp / FORMATS[cfg.format])
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "action_stats.json",
                     "config.json"):
            if (Path(cfg.policy) / name).is_file():
                shutil.copy2(Path(cfg.policy) / name, tmp / name)
        info = {"kind": GRAPH_KIND, "format": cfg.format, "source": str(cfg.policy), "inputs": list(INPUTS),
                "outputs": list(OUTPUTS), "image_size": policy.image_size, "action_chunk": policy.chunk,
                "num_bins": policy.tokenizer.num_bins, "prompt_template": policy.model.config.prompt.template,
                "prompt_lowercase": policy.model.config.prompt.lowercase}
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
        check = parity(graph, tmp, policy)
        ok = check["max_abs_logit_diff"] <= cfg.tolerance and check["bins_identical"]
        (tmp / "export_info.json").write_text(json.dumps({**info, "parity": {**check, "tolerance": cfg.tolerance}},
                                                         indent=2) + "\n")
        if not ok:
            raise ExportParityError(f"lapa export: parity FAILED ({check}; tolerance {cfg.tolerance}): "
                                    "nothing written")
    return check


class ExportParityError(RuntimeError):
    """The exported graph does not reproduce the eager model within the tolerance."""
