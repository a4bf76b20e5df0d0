"""`lapa demo` (what `make demo` runs): the whole Stage 1 story on built-in simulator data.

    lapa sim generate -> lapa ingest (train, val; with the ground-truth sidecar) -> lapa train-laq
    (experiment=laq_debug) -> lapa label -> lapa eval-laq (val) -> report

Each stage is the command's own `run(cfg)`, called in-process with its config composed exactly as the
command line would (`lapa.config.load`), so the demo exercises the real entry points. Re-running the
demo resumes: the simulator skips finished episodes, ingest skips finished shards (a finished job
returns at once), training is skipped when `laq_final.pt` exists (else it resumes from `last.ckpt`),
labelling skips finished shards; the evaluation is always redone (it is the report).

Layout under `output_dir`: sim/ (videos, sidecar), pairs/{train,val}/, laq/ (checkpoints, laq_final.pt),
latent/train/, report/ (report.md, metrics.json, pictures, demo_summary.json). The last line printed is
the report's directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapa.config import load, require
from lapa.io import write_json_atomic, write_text_atomic


@dataclass
class DemoConfig:
    """Settings of `lapa demo` (conf/demo.yaml); the defaults fit in 15 minutes on 2 CPU cores."""

    output_dir: str = "runs/demo"  # everything the demo writes
    episodes: int = 60  # simulator episodes (train + val)
    val_fraction: float = 0.25  # share of the episodes held out for the evaluation
    seed: int = 0  # simulator, ingest and training seed
    image_size: int = 64  # rendered, ingested and modelled size (the tiny LAQ's 64 px, 8x8 patches)
    frame_offset: int = 3  # control steps between frame t and t+1: larger motion, a harder copy baseline
    train_steps: int = 800  # measured: ~5 min of the ~6 min demo on 2 cores
    train_batch_size: int = 16  # frame pairs per training step
    workers: int = 2  # simulator and ingest processes
    label_batch_size: int = 128  # frame pairs per labelling pass
    eval_max_pairs: int = 2000  # held-out pairs evaluated at most (0: all)
    # Extra Hydra overrides per stage, e.g. train_overrides="['training.optimizer.lr=5e-4']".
    sim_overrides: list[str] = field(default_factory=list)
    ingest_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa ingest
    train_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa train-laq
    label_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa label
    eval_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa eval-laq

    def __post_init__(self) -> None:
        require(bool(self.output_dir), "output_dir", self.output_dir, "must be a directory path")
        require(self.episodes >= 4, "episodes", self.episodes, "must be >= 4 (train and val need episodes)")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must lie in (0, 1)")
        require(self.image_size >= 32 and self.image_size % 8 == 0, "image_size", self.image_size,
                "must be a multiple of 8 and >= 32 (the tiny LAQ uses an 8x8 patch grid)")
        require(self.frame_offset >= 1, "frame_offset", self.frame_offset, "must be >= 1")
        require(self.train_steps >= 1, "train_steps", self.train_steps, "must be >= 1")
        require(self.train_batch_size >= 1, "train_batch_size", self.train_batch_size, "must be >= 1")
        require(self.workers >= 0, "workers", self.workers, "must be >= 0")
        require(self.label_batch_size >= 1, "label_batch_size", self.label_batch_size, "must be >= 1")
        require(self.eval_max_pairs >= 0, "eval_max_pairs", self.eval_max_pairs, "must be >= 0 (0: all)")


def _stage(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    """Run one stage, time it and fail loudly when its command reports an error."""
    print(f"\n=== demo: {name} ===", flush=True)
    start = time.perf_counter()
    status = fn()
    timings[name] = round(time.perf_counter() - start, 1)
    if status not in (None, 0):
        raise RuntimeError(f"demo stage {name!r} failed with status {status}")
    print(f"=== demo: {name} done in {timings[name]:.1f} s ===", flush=True)
    return status


def stages(cfg: DemoConfig) -> list[tuple[str, Callable[[], Any]]]:
    """The pipeline: (stage name, thunk calling the command's run with its composed config)."""
    from lapa.data.ingest import IngestConfig
    from lapa.data.ingest import run as ingest
    from lapa.eval.laq_eval import EvalLAQConfig
    from lapa.eval.laq_eval import run as eval_laq
    from lapa.laq.label import LabelConfig
    from lapa.laq.label import run as label
    from lapa.laq.train import TrainLAQConfig
    from lapa.laq.train import run as train_laq
    from lapa.sim.generate import GenerateConfig
    from lapa.sim.generate import run as generate

    root = Path(cfg.output_dir)
    sim, laq = root / "sim", root / "laq"
    final = laq / "laq_final.pt"

    def ingest_split(split: str) -> Any:
        return ingest(load("ingest", IngestConfig, [
            f"input={sim / 'videos' / split}", f"output={root / 'pairs' / split}", f"sidecar={sim / 'sidecar'}",
            f"size={cfg.image_size}", f"offset={cfg.frame_offset}", f"workers={cfg.workers}",
            "samples_per_shard=500", f"seed={cfg.seed}", "progress=false", *cfg.ingest_overrides]))

    def train() -> Any:
        if final.exists():
            print(f"demo: {final} exists; skipping training (delete it to retrain)")
            return 0
        return train_laq(load("train_laq", TrainLAQConfig, [
            "experiment=laq_debug", f"output_dir={laq}", f"data.train_shards={root / 'pairs' / 'train'}",
            f"data.val_shards={root / 'pairs' / 'val'}", f"data.image_size={cfg.image_size}",
            f"model.image_size={cfg.image_size}", f"model.patch_size={cfg.image_size // 8}",
            f"data.batch_size={cfg.train_batch_size}", f"training.max_steps={cfg.train_steps}",
            # Flips would mirror the motion (dy) between training and evaluation pairs: off for the probe.
            "data.hflip=false", f"seed={cfg.seed}", "resume=auto", *cfg.train_overrides]))

    return [
        ("sim generate", lambda: generate(load("sim_generate", GenerateConfig, [
            f"output={sim}", f"episodes={cfg.episodes}", f"val_fraction={cfg.val_fraction}",
            f"seed={cfg.seed}", f"workers={cfg.workers}", f"sim.image_size={cfg.image_size}",
            *cfg.sim_overrides]))),
        ("ingest train", lambda: ingest_split("train")),
        ("ingest val", lambda: ingest_split("val")),
        ("train-laq", train),
        ("label", lambda: label(load("label", LabelConfig, [
            f"checkpoint={final}", f"shards={root / 'pairs' / 'train'}", f"output_dir={root / 'latent' / 'train'}",
            f"batch_size={cfg.label_batch_size}", "num_workers=0", "device=cpu", "rank=0", "world_size=1",
            *cfg.label_overrides]))),
        ("eval-laq", lambda: eval_laq(load("eval_laq", EvalLAQConfig, [
            f"checkpoint={final}", f"shards={root / 'pairs' / 'val'}", f"output_dir={root / 'report'}",
            f"max_pairs={cfg.eval_max_pairs}", "num_workers=0", "device=cpu", f"seed={cfg.seed}",
            *cfg.eval_overrides]))),
    ]


def _demo_section(timings: dict[str, float], metrics: dict[str, Any], cfg: DemoConfig) -> str:
    rows = "\n".join(f"| {name} | {sec:.1f} |" for name, sec in timings.items())
    return (f"\n## Demo pipeline\n\n{cfg.episodes} simulator episodes ({cfg.val_fraction:.0%} held out), "
            f"{cfg.image_size} px, frame offset {cfg.frame_offset}, {cfg.train_steps} training steps; "
            f"{metrics['pairs']} held-out pairs evaluated.\n\n| stage | seconds |\n|---|---|\n{rows}\n"
            f"| **total** | **{sum(timings.values()):.1f}** |\n")


def run(cfg: DemoConfig) -> int:
    """Run the Stage 1 pipeline on simulator data and print the report's directory on the last line.

    Example: `lapa demo output_dir=runs/demo episodes=60 train_steps=800` (re-running resumes).
    """
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"lapa demo: writing to {root.resolve()}", flush=True)
    timings: dict[str, float] = {}
    for name, thunk in stages(cfg):
        _stage(name, timings, thunk)

    report_dir = root / "report"
    metrics = json.loads((report_dir / "metrics.json").read_text())
    report = report_dir / "report.md"
    write_text_atomic(report, report.read_text() + _demo_section(timings, metrics, cfg))
    write_json_atomic(report_dir / "demo_summary.json", {
        "timings_s": timings, "total_s": round(sum(timings.values()), 1),
        "reconstruction": metrics["reconstruction"], "controllability": metrics["controllability"],
        "perplexity_per_position": metrics["codebook"]["perplexity_per_position"],
        "action": {k: v for k, v in (metrics["action"] or {}).items()
                   if k in ("nmi", "nmi_shuffled", "nmi_adjusted", "probe_accuracy", "probe_accuracy_shuffled",
                            "probe_majority_baseline", "ridge_r2", "ridge_r2_shuffled")},
        "verdict": metrics["verdict"]})
    print(f"\nlapa demo: stage seconds {timings}, total {sum(timings.values()):.1f} s")
    print(f"lapa demo: report {report}")
    print(report_dir.resolve())
    return 0
