"""Latency of one `LAPAPolicy.predict_action` call next to its floor, measured in the same run.

For each size, on the same camera frame (a 128 px simulator-sized frame, resized by the policy) and the same
instruction:
    call         the whole `predict_action`: resize, tokenise, vision towers, projector, LM, head, arg-max,
                 de-binning
    floor        the vision towers' forward + the bare LM's forward on the same sequence length (the work
                 no implementation can skip), each on ready tensors
    onnxruntime  the exported ONNX graph (`lapa export`) on the same inputs (CPU only; --onnx)
Target: call <= 1.2 x floor. Median of `--repeats` calls after warm-up.

Sizes: debug (conf/vla_model/vla_debug), cpu_medium (its LM 512 wide x 4 layers, as in vla_throughput.py),
and on a GPU `--preset vla_7b` (random init of the preset's architecture; bf16): target <= 33 ms per action.

    python benchmarks/policy_latency.py --threads 2 --onnx
    python benchmarks/policy_latency.py --device cuda --sizes vla_7b
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lapa.policy.vla_policy import LAPAPolicy  # noqa: E402
from lapa.vla import VLA  # noqa: E402
from lapa.vla.action_tokenizer import ActionTokenizer  # noqa: E402
from lapa.vla.finetune_model import swap_head  # noqa: E402
from vla_throughput import vla_config  # noqa: E402 (the sizes and random-init architectures)

INSTRUCTION = "put the yellow cube on the red cylinder"


def build_policy(size: str, device: torch.device, dtype: torch.dtype, directory: Path) -> LAPAPolicy:
    """A Stage 3 policy of `size` at random init, saved and loaded back as a user would load it."""
    torch.manual_seed(0)
    model = swap_head(VLA(vla_config(size, "sdpa")))
    rng = np.random.default_rng(0)
    actions = rng.normal(0, 0.02, (256, 7)).astype(np.float32)
    actions[:, 6] = rng.choice([-1.0, 1.0], 256)
    export = model.save_pretrained(directory / size, info={"training": {"data": {"image_size": None}}})
    ActionTokenizer.fit(actions).save(export)
    del model
    return LAPAPolicy.from_pretrained(export, device=device, dtype=dtype)


def timed(fn, repeats: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) median seconds of `fn()` over `repeats` calls after `warmup` ones. The CPU time (process
    time: every thread of this process) does not count time other processes hold the cores: on a shared
    machine it is the steadier measure; on an idle one both agree."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure(size: str, args: argparse.Namespace, workdir: Path) -> dict:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    policy = build_policy(size, device, dtype, workdir)
    model = policy.model
    frame = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    pixels = policy.preprocess([frame])  # uint8 [1, S, S, 3] on the device
    enc = {k: v.to(device) for k, v in model.tokenize([INSTRUCTION]).items()}
    T = model.sequence_length(enc["input_ids"].shape[1])
    ids = torch.randint(0, model.lm.get_input_embeddings().num_embeddings, (1, T), device=device)

    def floor() -> None:
        with torch.inference_mode():
            model.vision(pixels)
            model.lm(input_ids=ids, use_cache=False)

    call = timed(lambda: policy.predict_action(frame, INSTRUCTION), args.repeats, args.warmup, device)
    base = timed(floor, args.repeats, args.warmup, device)
    row = {"size": size, "T": T, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "call_ms": 1e3 * call[0], "floor_ms": 1e3 * base[0], "call_cpu_ms": 1e3 * call[1],
           "floor_cpu_ms": 1e3 * base[1]}
    if args.onnx and device.type == "cpu":
        from lapa.policy.graph_export import ExportConfig, load_graph
        from lapa.policy.graph_export import run as export_run

        out = workdir / f"{size}_onnx"
        export_run(ExportConfig(policy=str(workdir / size), format="onnx", output=str(out)))
        graph = load_graph(out)
        feed = (pixels.cpu().numpy(), enc["input_ids"].cpu().numpy().astype(np.int64),
                enc["attention_mask"].cpu().numpy().astype(np.int64))
        row["onnx_ms"] = 1e3 * timed(lambda: graph(*feed), args.repeats, args.warmup, device)[0]
        with torch.inference_mode():
            eager_graph = lambda: model(pixels, enc["input_ids"], enc["attention_mask"])  # noqa: E731
            row["eager_graph_ms"] = 1e3 * timed(eager_graph, args.repeats, args.warmup, device)[0]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="debug,cpu_medium", help="debug, cpu_medium, vla_1b, vla_7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--onnx", action="store_true", help="also export to ONNX and time onnxruntime (CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} threads, median of {args.repeats} calls; target: call <= 1.2x floor")
    head = (f"{'size':<11}{'params':>9}{'T':>5}{'call ms':>10}{'floor ms':>10}{'call/floor':>12}"
            f"{'CPU call/floor':>16}")
    head += f"{'eager fwd ms':>14}{'onnxrt ms':>11}" if args.onnx else ""
    print(head + "\n" + "-" * len(head))
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            r = measure(size, args, Path(tmp))
            ratio, cpu_ratio = r["call_ms"] / r["floor_ms"], r["call_cpu_ms"] / r["floor_cpu_ms"]
            missed += min(ratio, cpu_ratio) > 1.2
            line = (f"{size:<11}{r['params_M']:>8.2f}M{r['T']:>5}{r['call_ms']:>10.2f}{r['floor_ms']:>10.2f}"
                    f"{ratio:>11.2f}x{cpu_ratio:>15.2f}x")
            if "onnx_ms" in r:
                line += f"{r['eager_graph_ms']:>14.2f}{r['onnx_ms']:>11.2f}"
            print(line, flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
