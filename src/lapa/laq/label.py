"""`lapa label`: write latent-labelled shards with a trained LAQ (the spec's 3_generate_latent_labels.py).

For every frame pair (t, t+1) of the input shards the LAQ's inference path (`model.quantize`, eval mode)
gives the latent action, `code_seq_len` indices in 0..codebook_size-1. The output, one shard per input
shard (`{prefix}-{input name}`), holds per pair (DESIGN.md section 5, docs/contracts.md):

    KEY.jpg         frame t: the pair's `t.jpg` bytes unchanged (no re-encoding loss)
    KEY.txt         the instruction ("" when the pair has none)
    KEY.latent.npy  int64 [code_seq_len]
    KEY.json        the pair's metadata plus `pair_key` and `shard` (joins back to the source pair)

Distributed: rank r of N labels input shards r::N (N processes started by torchrun or srun, rank and world
size read from the environment unless set), so the ranks write disjoint outputs and need no
communication. Output shards are written atomically and an existing one is never relabelled, so a
killed job resumes where it stopped. Each rank writes a summary (pairs/s, code histogram per position,
distinct latent actions) to `output_dir/label_summary.json` (`label_summary_rank{r}.json` when N > 1).
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING

from lapa.config import require
from lapa.data.shards import decode_npy, list_shards, require_shards, write_shard
from lapa.io import write_json_atomic
from lapa.laq.metrics import code_counts, combo_ids, perplexity, utilisation
from lapa.training.cluster import DEVICE_CHOICES, dist_env, resolve_device, valid_device

log = logging.getLogger(__name__)


@dataclass
class LabelConfig:
    """Settings of `lapa label` (conf/label.yaml)."""

    checkpoint: str = MISSING  # LAQ checkpoint: ours (laq_final.pt) or a Lightning .ckpt of `lapa train-laq`
    shards: str = MISSING  # frame-pair shards: a directory, a glob or a brace pattern
    output_dir: str = MISSING  # folder for the latent-labelled shards and label_summary.json
    prefix: str = "latent"  # output shard = {prefix}-{input shard name}
    batch_size: int = 256  # frame pairs per forward pass
    num_workers: int = 2  # data-loader processes per rank
    image_size: int | None = None  # frames are resized to this; None: the model's image_size
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available, else cpu) | cpu | cuda | cuda:N
    rank: int | None = None  # None: from RANK / SLURM_PROCID, else 0
    world_size: int | None = None  # None: from WORLD_SIZE / SLURM_NTASKS, else 1

    def __post_init__(self) -> None:
        require(bool(self.checkpoint), "checkpoint", self.checkpoint, "set the LAQ checkpoint to label with")
        require(bool(self.shards), "shards", self.shards, "set the frame-pair shards to label")
        require(bool(self.output_dir), "output_dir", self.output_dir, "set the output directory")
        require(bool(self.prefix) and "/" not in self.prefix, "prefix", self.prefix,
                "must be a non-empty file-name prefix")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
        require(self.image_size is None or self.image_size >= 8, "image_size", self.image_size,
                "must be >= 8 or null")
        require(valid_device(self.device), "device", self.device, f"must be {DEVICE_CHOICES}")
        world = self.resolved_world_size()
        require(world >= 1, "world_size", self.world_size, "must be >= 1")
        rank = self.resolved_rank()
        require(0 <= rank < world, "rank", rank, f"must lie in 0..{world - 1} (world_size={world})")

    def check_inputs(self) -> None:
        """The shards exist and the checkpoint is a LAQ that takes `image_size` (run by `lapa` first)."""
        from lapa.laq.checkpoint import check_checkpoint

        require_shards("shards", self.shards)
        check_checkpoint("checkpoint", self.checkpoint, self.image_size)

    def resolved_rank(self) -> int:
        return self.rank if self.rank is not None else dist_env().rank

    def resolved_world_size(self) -> int:
        return self.world_size if self.world_size is not None else dist_env().world_size

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


def output_name(prefix: str, input_shard: str) -> str:
    """The output shard's file name for one input shard."""
    return f"{prefix}-{Path(input_shard).name}"


def assign_shards(shards: list[str], rank: int, world_size: int) -> list[str]:
    """The input shards rank `rank` labels: every `world_size`-th, starting at `rank` (disjoint, complete)."""
    return shards[rank::world_size]


def check_labels(indices: torch.Tensor, codebook_size: int, code_seq_len: int, where: str) -> np.ndarray:
    """Labels `[B, L]` as int64 numpy, raising ValueError when a shape or value is impossible."""
    idx = indices.detach().cpu().to(torch.int64).numpy()
    if idx.ndim != 2 or idx.shape[1] != code_seq_len:
        raise ValueError(f"{where}: expected labels [B, {code_seq_len}], got shape {tuple(idx.shape)}")
    if idx.size and (idx.min() < 0 or idx.max() >= codebook_size):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(f"{where}: latent label {bad} outside 0..{codebook_size - 1}")
    return idx


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """All `latent.npy` arrays of a latent-labelled shard, stacked `[N, L]` (in the shard's order)."""
    rows = []
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".latent.npy"):
                rows.append(decode_npy(tar.extractfile(member).read()))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)


def _model_dims(model: torch.nn.Module) -> tuple[int, int, int]:
    """(codebook_size, code_seq_len, image_size) of a loaded LAQ."""
    cfg = model.cfg
    return int(cfg.codebook_size), int(cfg.code_seq_len), int(cfg.image_size)


def label_shard(model: torch.nn.Module, shard: str, out_path: Path, cfg: LabelConfig,
                device: torch.device, image_size: int) -> np.ndarray:
    """Label one input shard and write its output shard atomically; returns the labels `[N, L]`."""
    from lapa.data.loader import frame_pair_loader

    codebook_size, code_seq_len, _ = _model_dims(model)
    samples: list[dict[str, Any]] = []
    labels: list[np.ndarray] = []
    loader = frame_pair_loader([shard], batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                               image_size=image_size)
    for batch in loader:
        frames = batch["frames"].to(device, non_blocking=True)  # [B, 3, 2, H, W] in [0, 1]
        with torch.inference_mode():
            idx = check_labels(model.quantize(frames), codebook_size, code_seq_len, f"{shard}")
        labels.append(idx)
        for i, key in enumerate(batch["key"]):
            meta = dict(batch["meta"][i])
            meta.update(pair_key=key, shard=Path(shard).name)
            samples.append({"__key__": key, "jpg": batch["t_jpeg"][i], "txt": batch["instruction"][i] or "",
                            "latent.npy": idx[i], "json": meta})
    write_shard(out_path, samples)
    return np.concatenate(labels) if labels else np.zeros((0, code_seq_len), dtype=np.int64)


def summarise(labels: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Code histogram per position, perplexity, utilisation and distinct latent actions of labels `[N, L]`."""
    counts = code_counts(labels, codebook_size, per_position=True)
    return {
        "code_histogram": counts.tolist(),
        "perplexity_per_position": [round(float(p), 4) for p in perplexity(counts)],
        "utilisation_per_position": [round(float(u), 4) for u in utilisation(counts)],
        "distinct_latent_actions": int(len(np.unique(combo_ids(labels, codebook_size)))) if len(labels) else 0,
    }


def run(cfg: LabelConfig) -> int:
    """Label frame-pair shards with a LAQ: `lapa label checkpoint=laq_final.pt shards=DIR output_dir=DIR`.

    Resumable (finished output shards are skipped) and splittable across processes (torchrun/srun).
    """
    from lapa.laq import load_model

    rank, world = cfg.resolved_rank(), cfg.resolved_world_size()
    device = cfg.resolved_device()
    all_shards = list_shards(cfg.shards)
    names = [Path(s).name for s in all_shards]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"shards={cfg.shards!r}: input shard names repeat ({dup[:3]}); the output shard "
                         "is named after its input, so label each directory into its own output_dir")
    mine = assign_shards(all_shards, rank, world)
    model = load_model(cfg.checkpoint).to(device).eval()
    codebook_size, code_seq_len, model_size = _model_dims(model)
    require(cfg.image_size in (None, model_size), "image_size", cfg.image_size,
            f"the model takes {model_size}-px frames; leave image_size unset (null)")
    image_size = cfg.image_size or model_size
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"lapa label: rank {rank}/{world} labels {len(mine)} of {len(all_shards)} shards on {device} "
          f"-> {out_dir}", flush=True)

    labels, new_pairs, skipped = [], 0, 0
    start = time.perf_counter()
    for n, shard in enumerate(mine, 1):
        out_path = out_dir / output_name(cfg.prefix, shard)
        if out_path.exists():  # complete by construction (atomic rename): resume skips it
            labels.append(read_labels(out_path))
            skipped += 1
            continue
        shard_labels = label_shard(model, shard, out_path, cfg, device, image_size)
        labels.append(shard_labels)
        new_pairs += len(shard_labels)
        rate = new_pairs / max(time.perf_counter() - start, 1e-9)
        log.info("rank %d: shard %d/%d %s: %d pairs (%.1f pairs/s)", rank, n, len(mine),
                 out_path.name, len(shard_labels), rate)
    elapsed = time.perf_counter() - start
    labels = [lab for lab in labels if lab.size]
    all_labels = np.concatenate(labels) if labels else np.zeros((0, code_seq_len), dtype=np.int64)

    summary = {
        "rank": rank, "world_size": world, "checkpoint": cfg.checkpoint, "device": str(device),
        "codebook_size": codebook_size, "code_seq_len": code_seq_len,
        "shards_assigned": len(mine), "shards_labelled": len(mine) - skipped, "shards_skipped": skipped,
        "pairs_total": int(len(all_labels)), "pairs_labelled": new_pairs,
        "seconds": round(elapsed, 3), "pairs_per_second": round(new_pairs / elapsed, 2) if elapsed > 0 else 0.0,
        **summarise(all_labels, codebook_size),
    }
    name = "label_summary.json" if world == 1 else f"label_summary_rank{rank}.json"
    write_json_atomic(out_dir / name, summary)
    print(f"lapa label: rank {rank}: {summary['pairs_labelled']} pairs labelled in {elapsed:.1f}s "
          f"({summary['pairs_per_second']} pairs/s), {skipped} shard(s) already done, "
          f"{summary['pairs_total']} pairs in total; {summary['distinct_latent_actions']} distinct latent "
          f"actions; perplexity per position {summary['perplexity_per_position']}; "
          f"summary: {out_dir / name}", flush=True)
    return 0
