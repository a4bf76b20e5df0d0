"""LAQ throughput: training samples/s (forward + backward + AdamW step) and inference pairs/s.

Sizes (issue 3, "Performance"): all with dim_head 64, heads = dim / 64, quant_dim 32, codebook 8,
4 action tokens, frames = random pixels in [0, 1], AdamW lr 1e-4.
    tiny    dim 256,  depth 2, 128 px, patch 16, batch 8
    medium  dim 512,  depth 4, 256 px, patch 32, batch 8
    paper   dim 1024, depth 8, 256 px, patch 32, batch 8 (CPU) / 32 (GPU)
("depth" = spatial = temporal = decoder depth.) The work per sample is counted with
`torch.utils.flop_counter` (a forward; training = 3x). AdamW is the fused kernel (CPU and GPU). Precision:
`--precision auto` is bf16 autocast on GPU and fp32 on CPU; `--precision bf16` also autocasts on CPU (fast
where the CPU has native bf16 dot products: avx512_bf16 or AMX). On GPU MFU is against the device's bf16
dense peak. `--compile` applies torch.compile to each transformer layer (`LAQ.compile_layers`);
`--compile-scope model` compiles the whole model instead (much slower to compile).

    python benchmarks/laq_throughput.py --threads 2 --sizes tiny,medium
    python benchmarks/laq_throughput.py --threads 2 --sizes tiny,medium --precision bf16
    python benchmarks/laq_throughput.py --json > laq_throughput.json

The published implementation, measured on the development machine with 2 threads, trains at
33.8 samples/s (tiny) and 6.5 samples/s (medium); the "vs published" column divides by those.
`--compare-reference-ops` also times the published implementation's ops (Conv3d PEG, all-pairs position
bias, einsum attention) in the same process: a ratio that survives a busy machine.
`--published-setup` also times the published implementation's whole training setup on the same device:
its ops, fp32 without TF32 matmuls, plain Adam (betas 0.9, 0.99), no compile (the reference recipe of
LAQ_REFERENCE.md); on a GPU that is the baseline of the "2x the published implementation" target.

    python benchmarks/laq_throughput.py --device cuda --sizes tiny,medium,paper --published-setup
    python benchmarks/laq_throughput.py --device cuda --compile --published-setup --gpu-batch 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from lapa.laq import LAQ, LAQConfig
from lapa.laq.attention import PEG, Attention, ContinuousPositionBias

SIZES = {
    "tiny": dict(dim=256, depth=2, image_size=128, patch_size=16, batch=8),
    "medium": dict(dim=512, depth=4, image_size=256, patch_size=32, batch=8),
    "paper": dict(dim=1024, depth=8, image_size=256, patch_size=32, batch=8),
}
PUBLISHED_CPU_TRAIN = {"tiny": 33.8, "medium": 6.5}  # samples/s, 2 threads, development machine
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def config_for(size: str) -> tuple[LAQConfig, int]:
    s = SIZES[size]
    cfg = LAQConfig(image_size=s["image_size"], patch_size=s["patch_size"], dim=s["dim"],
                    spatial_depth=s["depth"], temporal_depth=s["depth"], decoder_depth=s["depth"],
                    heads=s["dim"] // 64, dim_head=64, quant_dim=32, codebook_size=8, code_seq_len=4)
    return cfg, s["batch"]


def conv3d_peg_forward(self: PEG, x: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """The reference's PEG: pad (causal on t) and a depthwise Conv3d."""
    video = x.reshape(*shape, -1).permute(0, 4, 1, 2, 3)
    out = self.dsconv(F.pad(video, (1, 1, 1, 1, 2, 0)))
    return out.permute(0, 2, 3, 4, 1).reshape(x.shape)


def all_pairs_bias_forward(self: ContinuousPositionBias, h: int, w: int) -> torch.Tensor:
    """The reference's position bias: the MLP on all (hw)^2 relative positions."""
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1).t()
    rel = (grid[:, None] - grid[None]).float().to(self.net[-1].weight.device)
    x = torch.sign(rel) * torch.log(rel.abs() + 1)
    for layer in self.net:
        x = layer(x)
    return x.permute(2, 0, 1)


def einsum_attention_forward(self: Attention, x, context=None, attn_bias=None):
    """The reference's attention: einsum logits, explicit softmax, einsum with values."""
    b, n, _ = x.shape
    kv_input = self.context_norm(context) if context is not None else x
    q = self.to_q(self.norm(x)).view(b, n, self.heads, -1).transpose(1, 2)
    k, v = self.to_kv(kv_input).view(b, -1, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
    if self.num_null_kv:
        null = self.null_kv.view(self.heads, self.num_null_kv, 2, self.dim_head).unsqueeze(0)
        k = torch.cat((null[:, :, :, 0].expand(b, -1, -1, -1), k), 2)
        v = torch.cat((null[:, :, :, 1].expand(b, -1, -1, -1), v), 2)
    q, k = F.normalize(q, dim=-1) * self.q_scale, F.normalize(k, dim=-1) * self.k_scale
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
    if attn_bias is not None:
        sim = sim + F.pad(attn_bias, (self.num_null_kv, 0))
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(-1), v)
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


REFERENCE_OPS = {(PEG, "forward"): conv3d_peg_forward,
                 (ContinuousPositionBias, "forward"): all_pairs_bias_forward,
                 (Attention, "forward"): einsum_attention_forward}


@contextmanager
def reference_ops(enabled: bool):
    """Swap in the published implementation's way of computing the same math (for a same-load ratio)."""
    saved = {key: getattr(*key) for key in REFERENCE_OPS}
    try:
        if enabled:
            for (cls, name), fn in REFERENCE_OPS.items():
                setattr(cls, name, fn)
        yield
    finally:
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)


def published_setup_optimizer(params) -> torch.optim.Optimizer:
    """The reference recipe's optimiser (LAQ_REFERENCE.md): Adam, betas (0.9, 0.99), PyTorch's default
    (foreach) implementation."""
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.99))


def forward_flops(model: LAQ, frames: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(frames)
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, warmup: int, min_steps: int, min_seconds: float) -> tuple[float, int]:
    for _ in range(warmup):
        fn()
    _sync(device)
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        fn()
        steps += 1
    _sync(device)
    return time.perf_counter() - start, steps


def bench_size(size: str, device: torch.device, args: argparse.Namespace, published: bool = False) -> dict:
    """Train and inference rates of one size. `published=True` measures the published implementation's
    setup on the same device: its ops (`reference_ops`), fp32 without TF32 matmuls, plain Adam, eager."""
    cfg, batch = config_for(size)
    if device.type == "cuda":
        batch = args.gpu_paper_batch if size == "paper" else (args.gpu_batch or batch)
    torch.manual_seed(0)
    model = LAQ(cfg).to(device)
    frames = torch.rand(batch, 3, 2, cfg.image_size, cfg.image_size, device=device)
    flops = forward_flops(model.cpu(), frames[:1].cpu())
    model.to(device)
    bf16 = use_bf16(args.precision, device) and not published
    run_model = model
    if args.compile and not published:
        if args.compile_scope == "model":
            run_model = torch.compile(model, mode=args.compile_mode)
        else:
            model.compile_layers(mode=args.compile_mode)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = published_setup_optimizer(params) if published else torch.optim.AdamW(params, lr=1e-4, fused=True)
    tf32 = device.type == "cuda" and not published
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32

    def train_step() -> None:
        with autocast:
            loss = run_model(frames).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row: dict = {"size": size, "device": str(device), "batch": batch, "config": vars(cfg).copy(),
                 "gflop_per_sample_fwd": flops / 1e9,
                 "setup": "published" if published else
                 ("bf16" if bf16 else "fp32") + (" compiled" if args.compile else "")}
    row["config"].pop("replacement_steps")
    try:
        with reference_ops(published):
            if not args.infer_only and size not in args.skip_train:
                model.train()
                seconds, steps = timed(train_step, device, args.warmup, args.steps, args.min_seconds)
                row["train_samples_per_s"] = batch * steps / seconds
            model.eval()

            def infer_step() -> None:
                with torch.inference_mode(), autocast:
                    run_model(frames)

            seconds, steps = timed(infer_step, device, args.warmup, args.steps, args.min_seconds)
            row["infer_pairs_per_s"] = batch * steps / seconds
            if device.type == "cuda":
                row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak and "train_samples_per_s" in row:
            row["train_mfu"] = 3 * flops * row["train_samples_per_s"] / (peak * 1e12)
        if peak:
            row["infer_mfu"] = flops * row["infer_pairs_per_s"] / (peak * 1e12)
    else:
        if "train_samples_per_s" in row:
            row["train_tflops"] = 3 * flops * row["train_samples_per_s"] / 1e12
        if size in PUBLISHED_CPU_TRAIN and "train_samples_per_s" in row:
            row["vs_published"] = row["train_samples_per_s"] / PUBLISHED_CPU_TRAIN[size]
    return row


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for `--precision bf16`, and for `auto` on GPU."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def best_of(best: dict, row: dict) -> dict:
    """Keep the faster measurement of two rows of one size."""
    if not best:
        return row
    for key in ("train_samples_per_s", "infer_pairs_per_s", "train_mfu", "infer_mfu", "train_tflops",
                "vs_published"):
        if key in row:
            best[key] = max(best[key], row[key])
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,medium,paper", help="comma-separated subset of " + ",".join(SIZES))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the issue measures with 2)")
    parser.add_argument("--steps", type=int, default=5, help="minimum timed steps per measurement")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="measure N times (interleaved), keep the best")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer layer")
    parser.add_argument("--compile-scope", choices=("layers", "model"), default="layers",
                        help="with --compile: each transformer layer (fast to compile) or the whole model")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on GPU, fp32 on CPU; bf16: autocast on CPU too")
    parser.add_argument("--infer-only", action="store_true")
    parser.add_argument("--skip-train", default="", help="sizes to measure for inference only")
    parser.add_argument("--gpu-paper-batch", type=int, default=32)
    parser.add_argument("--compare-reference-ops", action="store_true",
                        help="also time each size with the published implementation's ops (Conv3d PEG, "
                        "all-pairs position bias, einsum attention) in the same process, for a ratio")
    parser.add_argument("--published-setup", action="store_true",
                        help="also time the published implementation's whole setup in the same process: its "
                        "ops, fp32 (no TF32), plain Adam, no compile; the ratio is 'vs published setup'")
    parser.add_argument("--gpu-batch", type=int, default=0, help="batch of tiny/medium on GPU (0: the issue's 8)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    args.skip_train = {s for s in args.skip_train.split(",") if s}
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    for size in sizes:
        row, ref, pub = {}, {}, {}
        for _ in range(args.repeats):  # interleaved; the best of each survives a busy machine better
            row = best_of(row, bench_size(size, device, args))
            if args.compare_reference_ops:
                with reference_ops(True):
                    ref = best_of(ref, bench_size(size, device, args))
            if args.published_setup:
                pub = best_of(pub, bench_size(size, device, args, published=True))
        for name, other in (("reference_ops", ref), ("published_setup", pub)):
            if not other:
                continue
            for key in ("train_samples_per_s", "infer_pairs_per_s"):
                if key in row:
                    row[f"{name}_{key}"] = other[key]
            if "train_samples_per_s" in row:
                row[f"vs_{name}"] = row["train_samples_per_s"] / other["train_samples_per_s"]
            row[f"vs_{name}_infer"] = row["infer_pairs_per_s"] / other["infer_pairs_per_s"]
        rows.append(row)
        if not args.json:
            print(f"  measured {size}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    where = ((torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads")
             + (", bf16 autocast" if use_bf16(args.precision, device) else ", fp32")
             + (f", compiled ({args.compile_scope})" if args.compile else ""))
    print(f"LAQ throughput on {where}; torch {torch.__version__}")
    print(f"{'size':<8}{'batch':>6}{'GFLOP/sample':>14}{'train samples/s':>17}{'infer pairs/s':>15}  {'extra'}")
    for r in rows:
        extra = ""
        if "vs_published" in r:
            extra = f"{r['vs_published']:.2f}x published"
        if "vs_reference_ops" in r:
            extra += f" {r['vs_reference_ops']:.2f}x ref-ops ({r['reference_ops_train_samples_per_s']:.1f})"
        if "vs_published_setup" in r:
            extra += (f" {r['vs_published_setup']:.2f}x train / {r['vs_published_setup_infer']:.2f}x infer vs"
                      f" published setup ({r['published_setup_train_samples_per_s']:.1f} /"
                      f" {r['published_setup_infer_pairs_per_s']:.1f})")
        if "train_mfu" in r:
            extra += f" MFU train {100 * r['train_mfu']:.1f}%"
        if "infer_mfu" in r:
            extra += f" MFU infer {100 * r['infer_mfu']:.1f}%"
        train = f"{r['train_samples_per_s']:.1f}" if "train_samples_per_s" in r else "-"
        print(f"{r['size']:<8}{r['batch']:>6}{r['gflop_per_sample_fwd']:>14.2f}{train:>17}"
              f"{r['infer_pairs_per_s']:>15.1f}  {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
