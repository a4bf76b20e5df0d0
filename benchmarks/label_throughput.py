"""Labelling throughput (pairs/s) of `lapa label` at the tiny and medium LAQ sizes, random weights.

Two numbers per size:
- model: `model.quantize` on in-memory frame batches (the encoder + nearest code; no decoder);
- end-to-end: `lapa label` on synthetic frame-pair shards (JPEG decode, resize, quantize, shard write).
The work per pair is the FLOPs of one quantize (counted with torch's FlopCounterMode) and the JPEG bytes
read; achieved TFLOP/s is printed, and MFU when `--peak-tflops` gives the device's peak.

    python benchmarks/label_throughput.py [--sizes tiny medium] [--pairs 512] [--batch 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lapa.config import load
from lapa.data.images import encode_jpeg
from lapa.data.shards import shard_name, write_shard
from lapa.laq import LAQ, LAQConfig, save_model
from lapa.laq.label import LabelConfig
from lapa.laq.label import run as label

SIZES = {  # name: (image_size, patch_size, dim, depth)
    "tiny": (128, 16, 256, 2),
    "medium": (256, 32, 512, 4),
}


def build(name: str) -> LAQ:
    image, patch, dim, depth = SIZES[name]
    cfg = LAQConfig(image_size=image, patch_size=patch, dim=dim, spatial_depth=depth, temporal_depth=depth,
                    decoder_depth=depth, heads=8, dim_head=64, codebook_size=8, code_seq_len=4)
    torch.manual_seed(0)
    return LAQ(cfg).eval()


def model_rate(model: LAQ, batch: int, pairs: int, device: torch.device) -> tuple[float, float]:
    """(pairs/s, FLOPs per pair) of quantize on random frames."""
    size = model.cfg.image_size
    frames = torch.rand(batch, 3, 2, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model.quantize(frames[:1])
    flops = float(counter.get_total_flops())
    model.quantize(frames)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps = max(1, pairs // batch)
    start = time.perf_counter()
    for _ in range(steps):
        model.quantize(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start), flops


def write_pairs(directory: Path, size: int, pairs: int, per_shard: int = 256) -> int:
    """Synthetic frame-pair shards (smooth random images); returns the JPEG bytes written."""
    rng = np.random.default_rng(0)
    total, key = 0, 0
    for s in range(0, pairs, per_shard):
        samples = []
        for _ in range(min(per_shard, pairs - s)):
            base = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
            img = base.repeat(8, axis=0).repeat(8, axis=1)
            t, t1 = encode_jpeg(img), encode_jpeg(np.roll(img, 2, axis=1))
            total += len(t) + len(t1)
            samples.append({"__key__": f"p{key:07d}", "t.jpg": t, "t1.jpg": t1, "txt": "push the cube",
                            "json": {"video_id": "bench", "frame_idx": key}})
            key += 1
        write_shard(directory / shard_name("pairs", s // per_shard), samples)
    return total


def end_to_end_rate(model: LAQ, batch: int, pairs: int, workers: int, device: str) -> tuple[float, int]:
    """(pairs/s, JPEG bytes) of a full `lapa label` run on fresh synthetic shards."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nbytes = write_pairs(root / "pairs", model.cfg.image_size, pairs)
        save_model(model, root / "laq.pt")
        cfg = load("label", LabelConfig, [f"checkpoint={root / 'laq.pt'}", f"shards={root / 'pairs'}",
                                          f"output_dir={root / 'out'}", f"batch_size={batch}",
                                          f"num_workers={workers}", f"device={device}", "rank=0", "world_size=1"])
        start = time.perf_counter()
        label(cfg)
        return pairs / (time.perf_counter() - start), nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers of the end-to-end run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.pairs} pairs, batch {args.batch}")
    header = (f"{'size':<8}{'params M':>9}{'GFLOP/pair':>11}{'model pairs/s':>14}{'TFLOP/s':>9}"
              f"{'MFU':>7}{'e2e pairs/s':>12}{'KB/pair':>9}")
    print(header)
    print("-" * len(header))
    for name in args.sizes:
        model = build(name).to(device)
        rate, flops = model_rate(model, args.batch, args.pairs, device)
        e2e, nbytes = end_to_end_rate(model.cpu(), args.batch, args.pairs, args.workers, args.device)
        tflops = rate * flops / 1e12
        mfu = f"{tflops / args.peak_tflops:.1%}" if args.peak_tflops else "-"
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<8}{params:>9.1f}{flops / 1e9:>11.2f}{rate:>14.1f}{tflops:>9.3f}{mfu:>7}{e2e:>12.1f}"
              f"{nbytes / args.pairs / 1024:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
