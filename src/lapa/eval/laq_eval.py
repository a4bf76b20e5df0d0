"""`lapa eval-laq`: is the latent action any good? Measures a LAQ on held-out frame-pair shards.

Two passes over the (deterministic) frame-pair loader:
1. latent actions `[N, L]` from `model.quantize`, the reconstruction `model.decode(frame_t, codes)` of
   frame t+1 against copying frame t, the true pair actions (`KEY.action.npy`) when the shards have them,
   and a few examples kept for the pictures;
2. controllability: the same decode with the latent of a random *other* pair (a derangement over the
   whole set, not the batch: neighbouring pairs of one video have similar actions).
Then codebook statistics, NMI and linear probes against the true action (each next to its shuffled-label
baseline), the pictures and `report.md` + `metrics.json` in `output_dir` (see lapa.eval.report).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING

from lapa.config import require
from lapa.data.shards import list_shards, require_shards
from lapa.eval import metrics as M
from lapa.laq import metrics as LM
from lapa.training.cluster import DEVICE_CHOICES, resolve_device, valid_device

log = logging.getLogger(__name__)


@dataclass
class EvalLAQConfig:
    """Settings of `lapa eval-laq` (conf/eval_laq.yaml)."""

    checkpoint: str = MISSING  # LAQ checkpoint: ours (laq_final.pt) or a Lightning .ckpt of `lapa train-laq`
    shards: str = MISSING  # held-out frame-pair shards (directory, glob, brace pattern)
    output_dir: str = MISSING  # folder for report.md, metrics.json and the pictures
    batch_size: int = 64  # frame pairs per forward pass
    num_workers: int = 2  # data-loader processes
    image_size: int | None = None  # None: the model's image_size
    device: str = "auto"  # auto (cuda:LOCAL_RANK when available, else cpu) | cpu | cuda | cuda:N
    max_pairs: int = 5000  # evaluate at most this many pairs (0: all)
    seed: int = 0  # derangement, probe split and shuffles
    action_dims: list[int] = field(default_factory=lambda: [0, 1, 2])  # discretised: dx dy dz
    action_bins: int = 3  # quantile bins per discretised dimension (3: terciles)
    probe_train_fraction: float = 0.7  # share of the pairs the probes train on (the rest tests)
    probe_l2: float = 1e-3  # logistic probe weight decay
    ridge_l2: float = 1.0  # ridge probe penalty
    grid_examples: int = 8  # rows of the reconstruction grid
    atlas_frames: int = 3  # frames shown in the latent action atlas
    shuffle_repeats: int = 5  # shuffles averaged for the NMI and probe baselines
    min_margin: float = 0.05  # "clearly above the shuffled baseline": NMI and accuracy by this much
    min_delta_psnr: float = 0.1  # dB of controllability below which the latent counts as ignored

    def __post_init__(self) -> None:
        require(bool(self.checkpoint), "checkpoint", self.checkpoint, "set the LAQ checkpoint to evaluate")
        require(bool(self.shards), "shards", self.shards, "set the held-out frame-pair shards")
        require(bool(self.output_dir), "output_dir", self.output_dir, "set the output directory")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
        require(self.image_size is None or self.image_size >= 8, "image_size", self.image_size,
                "must be >= 8 or null")
        require(valid_device(self.device), "device", self.device, f"must be {DEVICE_CHOICES}")
        require(self.max_pairs >= 0, "max_pairs", self.max_pairs, "must be >= 0 (0: all pairs)")
        require(all(0 <= d < 7 for d in self.action_dims) and len(self.action_dims) >= 1, "action_dims",
                self.action_dims, "must be a non-empty list of action dimensions in 0..6")
        require(self.action_bins >= 2, "action_bins", self.action_bins, "must be >= 2")
        require(0.0 < self.probe_train_fraction < 1.0, "probe_train_fraction", self.probe_train_fraction,
                "must lie strictly between 0 and 1")
        require(self.probe_l2 >= 0 and self.ridge_l2 > 0, "probe_l2/ridge_l2",
                (self.probe_l2, self.ridge_l2), "probe_l2 must be >= 0 and ridge_l2 > 0")
        require(self.grid_examples >= 1, "grid_examples", self.grid_examples, "must be >= 1")
        require(self.shuffle_repeats >= 1, "shuffle_repeats", self.shuffle_repeats, "must be >= 1")
        require(self.atlas_frames >= 0, "atlas_frames", self.atlas_frames, "must be >= 0")


    def check_inputs(self) -> None:
        """The shards exist and the checkpoint is a LAQ that takes `image_size` (run by `lapa` first)."""
        from lapa.laq.checkpoint import check_checkpoint

        require_shards("shards", self.shards)
        check_checkpoint("checkpoint", self.checkpoint, self.image_size)


def _batches(cfg: EvalLAQConfig, shards: list[str], image_size: int):
    """Frame-pair batches, stopping after `max_pairs` pairs (the last batch is cut to fit)."""
    from lapa.data.loader import frame_pair_loader

    seen = 0
    for batch in frame_pair_loader(shards, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                   image_size=image_size):
        n = len(batch["key"])
        if cfg.max_pairs and seen + n > cfg.max_pairs:
            n = cfg.max_pairs - seen
            batch = {k: (v[:n] if v is not None else None) for k, v in batch.items()}
        if n <= 0:
            return
        seen += n
        yield batch
        if cfg.max_pairs and seen >= cfg.max_pairs:
            return


@torch.inference_mode()
def collect(model: torch.nn.Module, cfg: EvalLAQConfig, shards: list[str], image_size: int,
            device: torch.device) -> dict[str, Any]:
    """Both passes: per-pair errors, latent actions, true actions and the example frames."""
    idx_all, mse_recon, mse_copy, actions, examples = [], [], [], [], []
    has_action = True
    for batch in _batches(cfg, shards, image_size):
        frames = batch["frames"].to(device)  # [B, 3, 2, H, W] in [0, 1]
        first, target = frames[:, :, 0], frames[:, :, 1]
        idx = model.quantize(frames)  # [B, L]
        recon = model.decode(first, idx)  # [B, 3, H, W]
        idx_all.append(idx.cpu())
        mse_recon.append(LM.per_image_mse(recon, target).cpu())
        mse_copy.append(LM.per_image_mse(first, target).cpu())
        if batch.get("action") is None:
            has_action = False
        elif has_action:
            actions.append(torch.as_tensor(batch["action"], dtype=torch.float32).cpu())
        if sum(len(e[0]) for e in examples) < cfg.grid_examples:
            keep = cfg.grid_examples - sum(len(e[0]) for e in examples)
            examples.append((first[:keep].cpu(), target[:keep].cpu(), recon[:keep].cpu(), idx[:keep].cpu()))
    if not idx_all:
        raise ValueError(f"shards={cfg.shards!r}: no frame pairs to evaluate")
    indices = torch.cat(idx_all)
    n = len(indices)
    if n < 4:
        raise ValueError(f"shards={cfg.shards!r}: only {n} frame pairs; need at least 4 to evaluate")

    # Pass 2: the latent of a random other pair, for the same frame t.
    perm = torch.as_tensor(M.derangement(n, cfg.seed))
    mse_random, offset = [], 0
    for batch in _batches(cfg, shards, image_size):
        frames = batch["frames"].to(device)
        b = len(frames)
        other = indices[perm[offset:offset + b]].to(device)
        mse_random.append(LM.per_image_mse(model.decode(frames[:, :, 0], other), frames[:, :, 1]).cpu())
        offset += b
    if offset != n:
        raise RuntimeError(f"the frame-pair loader is not deterministic: {offset} pairs then {n}")
    return {
        "indices": indices.numpy().astype(np.int64),
        "mse_recon": torch.cat(mse_recon).numpy(), "mse_copy": torch.cat(mse_copy).numpy(),
        "mse_random": torch.cat(mse_random).numpy(),
        "actions": torch.cat(actions).numpy() if has_action and actions else None,
        "examples": tuple(torch.cat(parts) for parts in zip(*examples)),
    }


def action_metrics(indices: np.ndarray, actions: np.ndarray, codebook_size: int,
                   cfg: EvalLAQConfig) -> dict[str, Any]:
    """NMI and linear probes from latent actions `[N, L]` to true actions `[N, 7]`, with shuffled baselines."""
    classes = M.discretize_actions(actions, cfg.action_dims, cfg.action_bins)
    classes_shuf = M.shuffled(classes, cfg.seed)
    combos = LM.combo_ids(indices, codebook_size)
    # NMI keeps a positive bias at finite N when the latent has many distinct values (up to K^L): the
    # baseline is the mean over several shuffles, and the adjusted NMI rescales the gap above it to
    # (NMI - baseline) / (1 - baseline), a Monte Carlo version of adjusted mutual information.
    nmi = M.normalized_mutual_information(combos, classes)
    nmi_shuf = float(np.mean([M.normalized_mutual_information(combos, M.shuffled(classes, cfg.seed + r))
                              for r in range(cfg.shuffle_repeats)]))
    feats = M.one_hot_latents(indices, codebook_size)
    split = dict(train_fraction=cfg.probe_train_fraction, seed=cfg.seed)
    _, test = M.split_indices(len(classes), cfg.probe_train_fraction, cfg.seed)
    majority = float(np.bincount(classes[test]).max() / len(test))
    r2, r2_dims = M.ridge_probe_r2(feats, actions, l2=cfg.ridge_l2, **split)
    r2_shuf, _ = M.ridge_probe_r2(feats, M.shuffled(actions, cfg.seed), l2=cfg.ridge_l2, **split)
    return {
        "discretisation": {"dims": list(cfg.action_dims), "bins": cfg.action_bins, "method": "quantile bins",
                           "classes_used": int(len(np.unique(classes)))},
        "nmi": nmi, "nmi_shuffled": nmi_shuf,
        "nmi_adjusted": (nmi - nmi_shuf) / (1.0 - nmi_shuf) if nmi_shuf < 1.0 else 0.0,
        "nmi_per_position": [M.normalized_mutual_information(indices[:, p], classes)
                             for p in range(indices.shape[1])],
        "probe_accuracy": M.logistic_probe_accuracy(feats, classes, l2=cfg.probe_l2, **split),
        # The mean over the same shuffles as NMI's baseline: one shuffle's accuracy varies by a few points.
        "probe_accuracy_shuffled": float(np.mean([
            M.logistic_probe_accuracy(feats, classes_shuf if r == 0 else M.shuffled(classes, cfg.seed + r),
                                      l2=cfg.probe_l2, **split) for r in range(cfg.shuffle_repeats)])),
        "probe_majority_baseline": majority,
        "ridge_r2": r2, "ridge_r2_shuffled": r2_shuf, "ridge_r2_per_dim": r2_dims,
    }


def compute_metrics(data: dict[str, Any], codebook_size: int, cfg: EvalLAQConfig) -> dict[str, Any]:
    """All numbers of the report from the collected arrays."""
    indices = data["indices"]
    mse, copy, rand = (float(np.mean(data[k])) for k in ("mse_recon", "mse_copy", "mse_random"))
    counts = LM.code_counts(indices, codebook_size, per_position=True)
    combos = LM.combo_histogram(indices)
    combo_counts = np.array(list(combos.values()))
    out: dict[str, Any] = {
        "pairs": int(len(indices)),
        "reconstruction": {"mse": mse, "psnr": LM.psnr_from_mse(mse), "copy_mse": copy,
                           "copy_psnr": LM.psnr_from_mse(copy),
                           "psnr_gain_over_copy": LM.psnr_from_mse(mse) - LM.psnr_from_mse(copy)},
        "controllability": {"psnr_inferred_latent": LM.psnr_from_mse(mse),
                            "psnr_random_latent": LM.psnr_from_mse(rand),
                            "delta_psnr": M.delta_psnr(mse, rand)},
        "codebook": {
            "codebook_size": codebook_size, "code_seq_len": int(indices.shape[1]),
            "perplexity_per_position": LM.perplexity(counts).tolist(),
            "utilisation_per_position": LM.utilisation(counts).tolist(),
            "code_histogram": counts.tolist(),
            "distinct_latent_actions": len(combos),
            "latent_action_perplexity": float(LM.perplexity(combo_counts)),
            "top_latent_actions": [{"codes": list(c), "count": k} for c, k in combos.most_common(10)],
        },
        "action": None,
    }
    if data["actions"] is not None:
        out["action"] = action_metrics(indices, data["actions"], codebook_size, cfg)
    act = out["action"]
    carries = None if act is None else bool(
        act["nmi"] - act["nmi_shuffled"] >= cfg.min_margin
        and act["probe_accuracy"] - act["probe_accuracy_shuffled"] >= cfg.min_margin)
    out["verdict"] = {"beats_copy_baseline": bool(mse < copy),
                      "controllable": bool(out["controllability"]["delta_psnr"] >= cfg.min_delta_psnr),
                      "latents_carry_action_information": carries, "min_margin": cfg.min_margin,
                      "min_delta_psnr": cfg.min_delta_psnr}
    return out


@torch.inference_mode()
def atlas(model: torch.nn.Module, first: torch.Tensor, codes: torch.Tensor, codebook_size: int,
          device: torch.device) -> torch.Tensor:
    """The decoder's next frame under every code at every position, the others held at the inferred codes.

    first `[3, H, W]`, codes `[L]` -> `[L, K, 3, H, W]` in [0, 1].
    """
    length = codes.shape[0]
    variants = codes.repeat(length * codebook_size, 1)  # [L*K, L]
    rows = torch.arange(length * codebook_size)
    variants[rows, rows // codebook_size] = rows % codebook_size
    pred = model.decode(first.unsqueeze(0).expand(len(variants), -1, -1, -1).to(device), variants.to(device))
    return pred.clamp(0, 1).cpu().reshape(length, codebook_size, *first.shape)


def run(cfg: EvalLAQConfig) -> int:
    """Evaluate a LAQ on held-out frame pairs: `lapa eval-laq checkpoint=... shards=DIR output_dir=DIR`.

    Writes report.md (tables, pictures, verdict), metrics.json and PNGs into output_dir.
    """
    from lapa.eval.report import write_report
    from lapa.laq import load_model

    start = time.perf_counter()
    device = resolve_device(cfg.device)
    shards = list_shards(cfg.shards)
    model = load_model(cfg.checkpoint).to(device).eval()
    codebook_size, image_size = int(model.cfg.codebook_size), cfg.image_size or int(model.cfg.image_size)
    require(image_size == model.cfg.image_size, "image_size", cfg.image_size,
            f"the model takes {model.cfg.image_size}-px frames; leave image_size unset (null)")
    print(f"lapa eval-laq: {len(shards)} shard(s) from {cfg.shards} on {device} -> {cfg.output_dir}", flush=True)
    data = collect(model, cfg, shards, image_size, device)
    metrics = compute_metrics(data, codebook_size, cfg)
    first, _, _, codes = data["examples"]
    atlases = [atlas(model, first[i], codes[i], codebook_size, device)
               for i in range(min(cfg.atlas_frames, len(first)))]
    metrics.update(checkpoint=cfg.checkpoint, shards=cfg.shards, image_size=image_size,
                   seconds=round(time.perf_counter() - start, 2))
    out_dir = write_report(Path(cfg.output_dir), metrics, data["examples"], atlases)
    rec, ctl = metrics["reconstruction"], metrics["controllability"]
    line = (f"lapa eval-laq: {metrics['pairs']} pairs: PSNR {rec['psnr']:.2f} dB vs copy {rec['copy_psnr']:.2f} dB, "
            f"delta-PSNR {ctl['delta_psnr']:.2f} dB, perplexity "
            f"{[round(p, 2) for p in metrics['codebook']['perplexity_per_position']]}")
    if metrics["action"] is not None:
        act = metrics["action"]
        line += (f", NMI {act['nmi']:.3f} (shuffled {act['nmi_shuffled']:.3f}), probe accuracy "
                 f"{act['probe_accuracy']:.3f} (shuffled {act['probe_accuracy_shuffled']:.3f})")
    print(line, flush=True)
    ver = metrics["verdict"]
    checks = {"beats copying frame t": ver["beats_copy_baseline"], "controllable": ver["controllable"],
              "carries action information": ver["latents_carry_action_information"]}
    failed = [name for name, ok in checks.items() if ok is False]
    print(f"lapa eval-laq: verdict: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}; "
          + "; ".join(f"{name}: {'n/a' if ok is None else 'yes' if ok else 'no'}" for name, ok in checks.items()),
          flush=True)
    print(f"lapa eval-laq: report: {out_dir / 'report.md'}", flush=True)
    return 0
