"""Data-loader throughput: decoded, augmented, collated frame pairs per second at 256x256.

Work per pair: two 256x256 JPEG decodes (2 x 196 KiB of RGB), uint8 -> float32 [3, 2, 256, 256]
(1.5 MiB), colour jitter + flip (a few passes over 393K floats), and for workers the shared-memory
hand-over of the batch. The reference is the raw JPEG decode rate (simplejpeg, one process) on the same
bytes, in pairs/s (two decodes per pair).

    python benchmarks/data_throughput.py [--pairs 1536] [--batch 32] [--json]

Targets (issue 2, 2-core machine): >= 500 pairs/s; decoding within 80 % of the raw decode rate.
Wall-clock rates depend on what else the machine runs (the load average is printed); pairs per
CPU-second (all processes, workers included, start-up included) is what the loader costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lapa.data.images import decode_jpeg, encode_jpeg
from lapa.data.loader import DataConfig, train_loader
from lapa.data.shards import shard_name, write_shard


def natural_frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field with texture: JPEG sizes like real video frames (tens of KB at q95)."""
    coarse = rng.integers(0, 256, (size // 32, size // 32, 3)).astype(np.float32)
    field = np.kron(coarse, np.ones((32, 32, 1), np.float32))
    field += rng.normal(0, 12, (size, size, 3))
    return np.clip(field, 0, 255).astype(np.uint8)


def make_shards(directory: Path, pairs: int, per_shard: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    frames = [encode_jpeg(natural_frame(rng, size), 95) for _ in range(64)]
    for s in range(0, pairs, per_shard):
        samples = [{"__key__": f"{n:09d}", "t.jpg": frames[n % 64], "t1.jpg": frames[(n + 1) % 64],
                    "json": {"video_id": "bench", "frame_idx": n}} for n in range(s, min(pairs, s + per_shard))]
        write_shard(directory / shard_name("bench", s // per_shard), samples)
    return frames


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers, once reaped)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def raw_decode_rate(frames: list[bytes], seconds: float = 2.0) -> tuple[float, float]:
    """(pairs/s, pairs per CPU-second) of bare simplejpeg decoding in this process."""
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        decode_jpeg(frames[n % len(frames)])
        n += 1
    return n / (time.perf_counter() - start) / 2, n / (time.process_time() - cpu) / 2


def loader_rate(directory: Path, workers: int, batch: int, size: int) -> tuple[float, float, int]:
    """(pairs/s, pairs per CPU-second over all processes, pairs) of the LAQ training loader."""
    cfg = DataConfig(train_shards=str(directory), val_shards=None, batch_size=batch, num_workers=workers,
                     image_size=size, shuffle_buffer=256, hflip=True, color_jitter=0.1)
    cpu = cpu_seconds()
    loader = train_loader(cfg)
    iterator = iter(loader)
    first = next(iterator)  # start-up (worker start, first shard) is not throughput...
    assert first["frames"].shape == (batch, 3, 2, size, size)
    pairs, start = 0, time.perf_counter()
    for b in iterator:
        pairs += b["frames"].shape[0]
    wall = time.perf_counter() - start
    del iterator, loader, first, b
    gc.collect()  # ends the workers, so their CPU time is counted ...
    try:
        while True:
            os.wait()
    except ChildProcessError:
        pass
    return pairs / wall, (pairs + batch) / (cpu_seconds() - cpu), pairs  # ... and so is the start-up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only receives batches; workers do the work
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        frames = make_shards(directory, args.pairs, per_shard=args.pairs // 8 or 1, size=args.size)
        raw, raw_cpu = raw_decode_rate(frames)
        rows = []
        for workers in args.workers:
            rate, per_cpu, pairs = loader_rate(directory, workers, args.batch, args.size)
            rows.append({"workers": workers, "pairs_per_s": round(rate, 1), "pairs": pairs,
                         "vs_raw_decode": round(rate / raw, 3), "pairs_per_cpu_s": round(per_cpu, 1),
                         "cpu_vs_raw_decode": round(per_cpu / raw_cpu, 3)})
    result = {"size": args.size, "batch": args.batch, "cpus": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2),
              "jpeg_kb": round(sum(map(len, frames)) / len(frames) / 1024, 1),
              "raw_decode_pairs_per_s": round(raw, 1), "raw_decode_pairs_per_cpu_s": round(raw_cpu, 1),
              "loaders": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"frame pairs {args.size}x{args.size}, batch {args.batch}, JPEG ~{result['jpeg_kb']} KB; "
          f"{result['cpus']} CPUs, load average {result['load_average_1min']}")
    print(f"raw simplejpeg decode (1 process): {raw:.0f} pairs/s, {raw_cpu:.0f} pairs per CPU-second")
    print(f"{'workers':>8} {'pairs/s':>10} {'vs raw':>8} {'pairs/CPU-s':>12} {'vs raw':>8}")
    for row in rows:
        print(f"{row['workers']:>8} {row['pairs_per_s']:>10.1f} {row['vs_raw_decode']:>8.2f} "
              f"{row['pairs_per_cpu_s']:>12.1f} {row['cpu_vs_raw_decode']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
