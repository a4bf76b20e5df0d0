"""VLA (Stage 2) training throughput next to the bare HF language model it wraps, measured in the same run.

For each size: the VLA's training step (frozen vision towers, projector, LM, ACT head, cross-entropy,
backward, AdamW) and the bare LM's own training step (`AutoModel` of the same HF config, the same sequence
length T = BOS + vision tokens + prompt + ACT, random token ids, a mean-square loss on the last k
hidden states, the same AdamW), interleaved, best of `--repeats`. Target: VLA >= 0.8x the bare LM.

Sizes (batch 8):
    debug      conf/vla_model/vla_debug (LM 128 wide x 2 layers, tiny SigLIP + DINOv2 at 64 px -> 64 tokens)
    cpu_medium vla_debug with the LM 512 wide x 4 layers (MLP 1408, 8 heads, 4 KV heads)
    vla_1b, vla_7b (GPU) the presets' architectures at random init (`ARCHS`: no weights can be downloaded
               here), the builtin tokenizer with the LM's 32000-entry embedding

FLOPs per sample (the usual 6N training / 2N inference rule, attention scores left out):
    6 x (trained parameters - token embedding table) x T  +  2 x sum over backbones (parameters x tokens)
The embedding table is a lookup (no FLOPs; 47% of the debug LM's parameters). MFU divides the achieved
FLOP/s by a peak: `--peak-tflops`, else a matmul measured in the same run (fp32 on CPU, bf16 on GPU).

    python benchmarks/vla_throughput.py --threads 2
    python benchmarks/vla_throughput.py --device cuda --preset vla_1b --precision bf16 --compile --peak-tflops 989
    python benchmarks/vla_throughput.py --device cuda --preset vla_7b --precision bf16 --compile --peak-tflops 989

On CUDA the models go through FSDP2 on a one-GPU mesh (`parallelize_vla` for the VLA, the same per-layer
`fully_shard` for the bare LM: bf16 parameters, fp32 reduction under `--precision bf16`), are measured one
after the other (a 7B VLA and a 7B LM do not fit together) and report peak memory. vla_7b on one GPU
holds 106 GB of fp32 training state plus ~2 GB of activations per sample: it fits an H200 (141 GB) at
batch 8, not an 80-94 GB GPU (use vla_1b there, or several GPUs through `lapa train-vla`).

What the CPU table shows (development machine): at the debug size the VLA runs at ~0.73x the bare LM;
profiled (per-phase thread CPU time, 1 thread), the difference is work the bare LM does not do: the
frozen towers' forward (~7 ms of a ~44 ms step: two towers as wide as the LM, 64-65 tokens each) and
projector + head + their AdamW updates (~4 ms). (The padding mask, ~2.5 ms, is gone: the sequence is
right-padded and needs none.) At cpu_medium (LM 512 wide, towers unchanged) those shrink to a few percent
and the VLA runs at ~0.97x (busy machine: compare the CPU-time column); at the 7B size the towers are 2%
of the FLOPs.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import sys
import time
from contextlib import nullcontext

import torch

from lapa.vla import VLA, load_vla_config
from lapa.vla.parallelize import (
    ParallelConfig,
    apply_activation_checkpointing,
    apply_compile,
    decoder_layers,
    parallelize_vla,
)

BATCH = 8
INSTRUCTIONS = ["pick up the red cube", "push the blue cylinder to the left of the green cube",
                "put the yellow cube on the red cube", "move the orange cylinder next to the purple cube",
                "lift the green cube", "push the red cylinder forward",
                "put the blue cube next to the yellow cylinder", "pick up the purple cylinder"]

LARGER_LM = ["lm.hf_config.hidden_size=512", "lm.hf_config.intermediate_size=1408", "lm.hf_config.num_hidden_layers=4",
             "lm.hf_config.num_attention_heads=8", "lm.hf_config.num_key_value_heads=4"]
SIZES: dict[str, tuple[str, list[str]]] = {"debug": ("vla_debug", []), "cpu_medium": ("vla_debug", LARGER_LM),
                                           "vla_1b": ("vla_1b", []), "vla_7b": ("vla_7b", [])}

# Architectures of the checkpoints the GPU presets name (their config.json), for random-init benchmarking.
LLAMA = {"model_type": "llama", "vocab_size": 32000, "rms_norm_eps": 1e-5, "hidden_act": "silu"}
ARCHS: dict[str, dict] = {
    "meta-llama/Llama-2-7b-hf": {**LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": {
        **LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
        "num_key_value_heads": 4, "max_position_embeddings": 2048},
    "google/siglip-so400m-patch14-224": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                         "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "google/siglip-base-patch16-224": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                       "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    "facebook/dinov2-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                              "image_size": 518, "patch_size": 14},
    "facebook/dinov2-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                             "image_size": 518, "patch_size": 14},
}


def vla_config(size: str, attn: str):
    """The size's VLAConfig; checkpoints named by the preset are replaced by their architecture (random init)."""
    preset, overrides = SIZES[size]
    cfg = load_vla_config(preset, overrides + [f"attn_implementation={attn}"])
    if cfg.lm.name_or_path is not None:
        cfg.lm.hf_config = {**ARCHS[cfg.lm.name_or_path], **cfg.lm.hf_config}
        cfg.tokenizer = "builtin"
        for b in cfg.vision.backbones:
            b.hf_config = {**ARCHS[b.name_or_path], **b.hf_config}
    return cfg


# ------------------------------------------------------------------------------------------ steps
class VLAStep:
    """One training step of the VLA on a fixed batch."""

    def __init__(self, model: VLA, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        side = model.vision.backbones[0].image_size  # shards deliver frames at the backbone's size
        self.images = torch.randint(0, 256, (BATCH, side, side, 3), dtype=torch.uint8, generator=g).to(device)
        enc = model.tokenize((INSTRUCTIONS * BATCH)[:BATCH])
        self.ids, self.mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        self.labels = torch.randint(0, model.config.head.num_classes, (BATCH, model.config.head.num_outputs),
                                    generator=g).to(device)
        self.seq_len = model.sequence_length(self.ids.shape[1])  # T
        self.model = model

    def __call__(self) -> torch.Tensor:
        logits = self.model(self.images, self.ids, self.mask)
        return self.model.loss(logits, self.labels)


class LMStep:
    """One training step of the bare LM on random token ids of the VLA's sequence length (its embedding
    table is trained, as the VLA's is)."""

    def __init__(self, lm: torch.nn.Module, seq_len: int, k: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        vocab = lm.get_input_embeddings().num_embeddings
        self.ids = torch.randint(0, vocab, (BATCH, seq_len), generator=g).to(device)
        self.mask = torch.ones(BATCH, seq_len, dtype=torch.long, device=device)
        self.lm, self.k = lm, k

    def __call__(self) -> torch.Tensor:
        hidden = self.lm(input_ids=self.ids, attention_mask=self.mask, use_cache=False).last_hidden_state
        return hidden[:, -self.k:].float().pow(2).mean()


class Trainer:
    """forward + backward + AdamW (fused on CUDA, foreach on CPU) + zero_grad, timed."""

    def __init__(self, step, params, device: torch.device, autocast) -> None:
        params = [p for p in params if p.requires_grad]
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, **fused)
        self.step, self.device, self.autocast = step, device, autocast

    def __call__(self) -> None:
        with self.autocast():
            loss = self.step()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds per step over `steps` steps. On a shared CPU the process time
        is the steadier of the two: it does not count time other processes hold the cores."""
        _sync(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self()
        _sync(self.device)
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ FLOPs
def embedding_params(lm: torch.nn.Module) -> int:
    return lm.get_input_embeddings().weight.numel()


def vla_flops_per_sample(model: VLA, seq_len: int) -> float:
    counts = model.parameter_counts()
    vision = sum(b.num_parameters() * b.num_tokens for b in model.vision.backbones)
    return 6.0 * (counts["trained"] - embedding_params(model.lm)) * seq_len + 2.0 * vision


def lm_flops_per_sample(lm: torch.nn.Module, seq_len: int) -> float:
    return 6.0 * (sum(p.numel() for p in lm.parameters()) - embedding_params(lm)) * seq_len


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul on this device (best of a few): the hardware's practical peak."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2.0 * n**3 / best


# ------------------------------------------------------------------------------------------ setup
def one_rank_mesh(device: torch.device):
    """A one-rank process group and Lightning-shaped mesh, for FSDP2 in this single process."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        with socket.socket() as s:  # a free port for the one-process rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)
    return init_device_mesh(device.type, (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))


def shard_lm(lm: torch.nn.Module, mesh, cfg: ParallelConfig) -> torch.nn.Module:
    """The bare LM under the same treatment as the VLA's LM in `parallelize_vla`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(lm)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(layers)
    if cfg.compile:
        apply_compile(layers)
    dtype = cfg.param_dtype(mesh.device_type)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for parent, name in layers:
        fully_shard(getattr(parent, name), mesh=mesh["data_parallel"], mp_policy=mp,
                    reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(lm, mesh=mesh["data_parallel"], mp_policy=mp)
    return lm


def describe(size: str, args) -> dict:
    """Sizes, parameter counts and FLOPs per sample, from models built on the meta device (no memory)."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = VLA(vla_config(size, args.attn), load_weights=False)
        lm = AutoModel.from_config(model.lm.config)
    counts = model.parameter_counts()
    seq_len = VLAStep(model, torch.device("meta")).seq_len
    return {"size": size, "batch": BATCH, "seq_len": seq_len, "vision_tokens": model.num_vision_tokens,
            "trained_params": counts["trained"], "frozen_params": counts["frozen"],
            "lm_params": sum(p.numel() for p in lm.parameters()),
            "vla_flops_per_sample": vla_flops_per_sample(model, seq_len),
            "lm_flops_per_sample": lm_flops_per_sample(lm, seq_len)}


def make_trainer(name: str, size: str, device: torch.device, args, mesh) -> Trainer:
    """The timed training step of the VLA (`name` "vla") or of the bare LM ("lm"), built on `device` at
    random init (seed 0) with the run's parallel settings."""
    from transformers import AutoModel

    par = ParallelConfig(activation_checkpointing=args.activation_checkpointing, compile=args.compile,
                         mixed_precision="bf16" if args.precision == "bf16" else "none")
    autocast = nullcontext
    if args.precision == "bf16" and mesh is None:  # without FSDP's mixed-precision policy: autocast
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    cfg = vla_config(size, args.attn)
    torch.manual_seed(0)
    with torch.device(device):
        model = VLA(cfg, load_weights=False)
        if name == "lm":
            lm = AutoModel.from_config(model.lm.config, attn_implementation=args.attn)
    if name == "vla":
        model = parallelize_vla(model, mesh, par) if mesh is not None else _plain(model, par)
        return Trainer(VLAStep(model, device), model.parameters(), device, autocast)
    seq_len, k = VLAStep(model, device).seq_len, cfg.head.num_queries
    del model
    lm = shard_lm(lm, mesh, par) if mesh is not None else _plain(lm, par)
    return Trainer(LMStep(lm, seq_len, k, device), lm.parameters(), device, autocast)


def measure(size: str, device: torch.device, args) -> dict:
    row = describe(size, args)
    mesh = one_rank_mesh(device) if args.fsdp else None
    best = {"vla": float("inf"), "lm": float("inf")}
    best_cpu = dict(best)
    if device.type == "cuda":  # one model at a time: a 7B VLA and a 7B LM do not fit on one GPU together
        for name in best:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            trainer = make_trainer(name, size, device, args, mesh)
            for _ in range(args.warmup):
                trainer()
            for _ in range(args.repeats):
                best[name] = min(best[name], trainer.timed(args.steps)[0])
            row[f"{name}_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del trainer
    else:  # interleaved on a shared CPU: the best of each survives a busy machine better
        trainers = {name: make_trainer(name, size, device, args, mesh) for name in best}
        for trainer in trainers.values():
            for _ in range(args.warmup):
                trainer()
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                wall, cpu = trainer.timed(args.steps)
                best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
        row["vla_vs_lm_cpu_time"] = best_cpu["lm"] / best_cpu["vla"]
    for name in best:
        row[f"{name}_samples_per_s"] = BATCH / best[name]
        row[f"{name}_tokens_per_s"] = BATCH * row["seq_len"] / best[name]
        row[f"{name}_flops_per_s"] = row[f"{name}_samples_per_s"] * row[f"{name}_flops_per_sample"]
    row["vla_vs_lm"] = row["vla_samples_per_s"] / row["lm_samples_per_s"]
    row["vla_vs_lm_flops"] = row["vla_flops_per_s"] / row["lm_flops_per_s"]
    return row


def _plain(model: torch.nn.Module, par: ParallelConfig) -> torch.nn.Module:
    """Without FSDP (the CPU default): activation checkpointing and compile of the LM layers only."""
    layers = decoder_layers(model.lm if isinstance(model, VLA) else model)
    if par.activation_checkpointing:
        apply_activation_checkpointing(layers)
    if par.compile:
        apply_compile(layers)
    return model


def ratio(value: float, show: bool) -> str:
    return f"{value:.2f}x" if show else ""


def table(rows: list[dict], peak: float, device: torch.device) -> str:
    head = (f"{'size':<11} {'model':<5} {'trained':>9} {'frozen':>9} {'T':>4} {'samples/s':>10} {'tokens/s':>10} "
            f"{'GFLOP/smp':>10} {'TFLOP/s':>8} {'MFU':>6} {'vs LM':>6} {'vs LM FLOP/s':>12}")
    head += f" {'mem GiB':>8}" if device.type == "cuda" else f" {'vs LM CPU time':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        for name in ("vla", "lm"):
            vla = name == "vla"
            line = (f"{r['size']:<11} {name.upper() if vla else 'LM':<5} "
                    f"{(r['trained_params'] if vla else r['lm_params']) / 1e6:>8.2f}M "
                    f"{(r['frozen_params'] if vla else 0) / 1e6:>8.2f}M {r['seq_len']:>4} "
                    f"{r[f'{name}_samples_per_s']:>10.1f} {r[f'{name}_tokens_per_s']:>10.0f} "
                    f"{r[f'{name}_flops_per_sample'] / 1e9:>10.3f} {r[f'{name}_flops_per_s'] / 1e12:>8.3f} "
                    f"{r[f'{name}_flops_per_s'] / peak:>6.1%} "
                    f"{ratio(r['vla_vs_lm'], vla):>6} {ratio(r['vla_vs_lm_flops'], vla):>12}")
            if device.type == "cuda":
                line += f" {r.get(f'{name}_peak_memory_gib', float('nan')):>8.1f}"
            else:
                line += f" {ratio(r['vla_vs_lm_cpu_time'], vla):>14}"
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help=f"comma-separated subset of {list(SIZES)} "
                        "(default: debug,cpu_medium on CPU, vla_1b on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--preset", default=None, help="a GPU preset to measure (vla_1b, vla_7b); same as --sizes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (interleaved on CPU); best kept")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: FSDP2 MixedPrecisionPolicy (bf16 params, fp32 reduce) with --fsdp, else autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile each LM decoder layer")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                        help="FSDP2 on a one-rank mesh (default: on for CUDA, off for CPU)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation of LM and backbones")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak for MFU (H100/H200 SXM bf16 dense: 989); default: a matmul measured now")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.fsdp is None:
        args.fsdp = device.type == "cuda"
    sizes = [s for s in (args.sizes or args.preset or ("vla_1b" if device.type == "cuda" else "debug,cpu_medium"))
             .split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.compile:
        args.warmup = max(args.warmup, 3)
    rows = []
    for size in sizes:
        rows.append(measure(size, device, args))
        print(f"  measured {size}", file=sys.stderr)
    dtype = torch.bfloat16 if device.type == "cuda" or args.precision == "bf16" else torch.float32
    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(device, dtype)
    if args.json:
        print(json.dumps([{**r, "peak_flops_per_s": peak} for r in rows], indent=2))
    else:
        print(f"device {device} ({torch.get_num_threads()} threads), precision {args.precision}, fsdp {args.fsdp}, "
              f"compile {args.compile}, activation checkpointing {args.activation_checkpointing}, batch {BATCH}; "
              f"MFU against {peak / 1e12:.3f} TFLOP/s ({'given' if args.peak_tflops else f'{dtype} matmul measured'})")
        print(table(rows, peak, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
