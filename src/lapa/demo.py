"""`lapa demo` (what `make demo` runs): the whole story on built-in simulator data, videos to a policy.

    Stage 1:  lapa sim generate (action-free videos) -> lapa ingest (train, val; with the ground-truth
              sidecar) -> lapa train-laq (experiment=laq_debug) -> lapa label (train and val pairs)
              -> lapa eval-laq (val) -> report
    Stage 2:  lapa train-vla (experiment=vla_debug) on the latent labels, validated on the val pairs' labels
    Stage 3:  lapa sim generate (demonstrations, another seed: scenes the videos never showed) -> lapa
              finetune on `demos` of them, from the Stage 2 export (LAPA) and from scratch (the baseline)
    Closed loop: lapa sim eval of both finetuned policies (evaluation seeds, disjoint from both)

Each stage is the command's own `run(cfg)`, called in-process with its config composed exactly as the
command line would (`lapa.config.load`), so the demo exercises the real entry points. Re-running the
demo resumes: the simulator skips finished episodes, ingest skips finished shards (a finished job
returns at once), a training whose final model exists is skipped (else it resumes from its last
checkpoint), labelling skips finished shards, a finished closed-loop evaluation is kept; the Stage 1
evaluation is always redone (it is the report). `policy_stages=false` stops after Stage 1.

Layout under `output_dir`: sim/ (videos, sidecar), pairs/{train,val}/, laq/ (checkpoints, laq_final.pt),
latent/{train,val}/, vla/ (Stage 2 run and export/), robot/ (demonstrations), finetune_lapa/ and
finetune_scratch/ (Stage 3 runs and export/), eval_lapa/ and eval_scratch/ (closed-loop reports), report/
(report.md, metrics.json, pictures, demo_summary.json). The last line printed is the report's directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lapa.config import load, require
from lapa.io import write_json_atomic, write_text_atomic


@dataclass
class DemoConfig:
    """Settings of `lapa demo` (conf/demo.yaml); the defaults fit in 30 minutes on 2 CPU cores."""

    output_dir: str = "runs/demo"  # everything the demo writes
    episodes: int = 100  # simulator episodes (train + val): ~1,900 frame pairs at ~23 steps per episode
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
    # Stages 2 and 3 and the closed loop (false: stop after Stage 1)
    policy_stages: bool = True
    vla_steps: int = 1000  # lapa train-vla steps (the vla_debug preset's)
    demo_episodes: int = 40  # demonstration episodes simulated, 25% held out for validation
    demo_seed: int | None = None  # the demonstrations' simulator seed; null: seed + 1 (never the videos' seed)
    demos: int = 20  # demonstrations Stage 3 trains on (the few-demo regime)
    finetune_steps: int = 400  # lapa finetune steps, each arm
    scratch_baseline: bool = True  # also finetune from scratch (the same model without Stage 2)
    eval_episodes: int = 5  # closed-loop episodes per task family, each arm
    vla_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa train-vla
    finetune_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa finetune (both arms)
    sim_eval_overrides: list[str] = field(default_factory=list)  # extra overrides of lapa sim eval

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
        require(self.vla_steps >= 1, "vla_steps", self.vla_steps, "must be >= 1")
        require(self.demo_episodes >= 4, "demo_episodes", self.demo_episodes, "must be >= 4 (train and val)")
        require(self.demo_seed != self.seed, "demo_seed", self.demo_seed,
                "must differ from seed (the demonstrations' scenes must not be the videos')")
        require(1 <= self.demos < self.demo_episodes, "demos", self.demos,
                f"must be in 1..{self.demo_episodes - 1} (demo_episodes, some held out)")
        require(self.finetune_steps >= 1, "finetune_steps", self.finetune_steps, "must be >= 1")
        require(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, "must be >= 1")


def run_stage(name: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
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
        ("label", lambda: label_pairs(root, "train", cfg.label_batch_size, cfg.label_overrides)),
        ("eval-laq", lambda: eval_laq(load("eval_laq", EvalLAQConfig, [
            f"checkpoint={final}", f"shards={root / 'pairs' / 'val'}", f"output_dir={root / 'report'}",
            f"max_pairs={cfg.eval_max_pairs}", "num_workers=0", "device=cpu", f"seed={cfg.seed}",
            *cfg.eval_overrides]))),
    ]


# The commands of Stages 2 and 3 and the closed loop, as the demo and `lapa experiment` both run them.
def label_pairs(root: Path, split: str, batch_size: int = 128, overrides: Sequence[str] = ()) -> Any:
    """`lapa label` of root/pairs/<split> with root/laq/laq_final.pt into root/latent/<split>."""
    from lapa.laq.label import LabelConfig
    from lapa.laq.label import run as label

    return label(load("label", LabelConfig, [
        f"checkpoint={root / 'laq' / 'laq_final.pt'}", f"shards={root / 'pairs' / split}",
        f"output_dir={root / 'latent' / split}", f"batch_size={batch_size}", "num_workers=0", "device=cpu",
        "rank=0", "world_size=1", *overrides]))


def train_stage2(labels: Path, out: Path, image_size: int, steps: int, seed: int,
                 overrides: Sequence[str] = ()) -> Any:
    """`lapa train-vla experiment=vla_debug` on labels/{train,val} into `out` (resumes a killed run)."""
    from lapa.vla.pretrain import run as train_vla
    from lapa.vla.pretrain_config import TrainVLAConfig

    return train_vla(load("train_vla", TrainVLAConfig, [
        "experiment=vla_debug", f"data.train_shards={labels / 'train'}", f"data.val_shards={labels / 'val'}",
        f"data.image_size={image_size}", f"output_dir={out}", f"training.max_steps={steps}",
        "training.limit_val_batches=null", f"seed={seed}", "resume=auto", *overrides]))


def generate_demos(out: Path, episodes: int, seed: int, image_size: int, workers: int,
                   overrides: Sequence[str] = ()) -> Any:
    """`lapa sim generate` of demonstrations (25% held out) into `out`."""
    from lapa.sim.generate import GenerateConfig
    from lapa.sim.generate import run as generate

    return generate(load("sim_generate", GenerateConfig, [
        f"output={out}", f"episodes={episodes}", "val_fraction=0.25", f"seed={seed}", f"workers={workers}",
        f"sim.image_size={image_size}", *overrides]))


def finetune_on_demos(init: str | Path, demos: Path, out: Path, n: int, image_size: int, steps: int, seed: int,
                      episodes_seed: int | None = None, overrides: Sequence[str] = ()) -> Any:
    """`lapa finetune experiment=finetune_debug` from `init` on n of demos/train, validated on demos/val."""
    from lapa.vla.finetune import run as finetune
    from lapa.vla.finetune_config import FinetuneConfig

    chosen = [] if episodes_seed is None else [f"data.episodes_seed={episodes_seed}"]
    return finetune(load("finetune", FinetuneConfig, [
        "experiment=finetune_debug", f"init={init}", f"data.max_episodes={n}", *chosen,
        f"data.train_shards={demos / 'train'}", f"data.val_shards={demos / 'val'}", f"data.image_size={image_size}",
        f"output_dir={out}", f"training.max_steps={steps}", f"seed={seed}", "resume=auto", *overrides]))


def evaluate_closed_loop(export: Path, out: Path, episodes: int, image_size: int, workers: int,
                         seed: int | None = None, overrides: Sequence[str] = ()) -> Any:
    """`lapa sim eval` of a Stage 3 export into `out` (one video per outcome and family)."""
    from lapa.eval.closed_loop import SimEvalConfig
    from lapa.eval.closed_loop import run as sim_eval

    seeds = [] if seed is None else [f"seed={seed}"]
    return sim_eval(load("sim_eval", SimEvalConfig, [
        f"policy={export}", f"output={out}", f"episodes={episodes}", *seeds, f"sim.image_size={image_size}",
        f"workers={workers}", "videos_per_task=1", *overrides]))


def policy_stages(cfg: DemoConfig) -> list[tuple[str, Callable[[], Any]]]:
    """Stages 2 and 3 and the closed loop, after Stage 1 (same form as `stages`)."""
    root = Path(cfg.output_dir)

    def done(export: Path, what: str) -> bool:
        if (export / "info.json").is_file():
            print(f"demo: {export} exists; skipping {what} (delete it to retrain)")
            return True
        return False

    def stage2() -> Any:
        if done(root / "vla" / "export", "Stage 2"):
            return 0
        return train_stage2(root / "latent", root / "vla", cfg.image_size, cfg.vla_steps, cfg.seed, cfg.vla_overrides)

    def stage3(arm: str) -> Any:
        out = root / f"finetune_{arm}"
        if done(out / "export", f"Stage 3 ({arm})"):
            return 0
        init = root / "vla" / "export" if arm == "lapa" else "scratch"
        return finetune_on_demos(init, root / "robot" / "demos", out, cfg.demos, cfg.image_size, cfg.finetune_steps,
                                 cfg.seed, overrides=cfg.finetune_overrides)

    def closed_loop(arm: str) -> Any:
        out = root / f"eval_{arm}"
        if (out / "metrics.json").is_file():
            print(f"demo: {out / 'metrics.json'} exists; keeping that evaluation (delete it to redo)")
            return 0
        return evaluate_closed_loop(root / f"finetune_{arm}" / "export", out, cfg.eval_episodes, cfg.image_size,
                                    cfg.workers, overrides=cfg.sim_eval_overrides)

    arms = ["lapa", "scratch"] if cfg.scratch_baseline else ["lapa"]
    demo_seed = cfg.seed + 1 if cfg.demo_seed is None else cfg.demo_seed
    return [
        ("label val", lambda: label_pairs(root, "val", cfg.label_batch_size, cfg.label_overrides)),
        ("train-vla", stage2),
        # another seed: world seeds demo_seed * 100003 + i, never the videos' seed * 100003 + i
        ("sim demos", lambda: generate_demos(root / "robot", cfg.demo_episodes, demo_seed, cfg.image_size,
                                            cfg.workers, cfg.sim_overrides)),
        *[(f"finetune {arm}", lambda arm=arm: stage3(arm)) for arm in arms],
        *[(f"sim eval {arm}", lambda arm=arm: closed_loop(arm)) for arm in arms],
    ]


def policy_results(cfg: DemoConfig) -> dict[str, Any]:
    """The figures of Stages 2 and 3 and the closed loop, read from the runs' summaries."""
    root = Path(cfg.output_dir)
    vla = json.loads((root / "vla" / "summary.json").read_text())
    arms = {}
    for arm in ["lapa", "scratch"] if cfg.scratch_baseline else ["lapa"]:
        ft = json.loads((root / f"finetune_{arm}" / "summary.json").read_text())["final_val"]
        ev = json.loads((root / f"eval_{arm}" / "metrics.json").read_text())
        arms[arm] = {"nmse": ft["nmse"], "nmse_mean_action": ft["nmse_mean_action"], "acc": ft["acc"],
                     "success": ev["overall"], "families": ev["families"]}
    return {"stage2": {"steps": vla["steps"], "model": vla["final_val"], "floor": vla["final_val_floor"]},
            "demos": cfg.demos, "eval_episodes_per_task": cfg.eval_episodes, "arms": arms}


def _policy_section(results: dict[str, Any], root: Path) -> str:
    """Report text for Stages 2 and 3 and the closed loop."""
    s2 = results["stage2"]
    lines = ["", "## Stage 2: latent actions from one image and the instruction", "",
             f"`lapa train-vla experiment=vla_debug`, {s2['steps']} steps, on the latent labels above; "
             f"{s2['model']['samples']} held-out pairs (the val episodes), against the floor (always the most "
             "frequent training label of each position).", "", "| | val loss | top-1 | top-3 | exact match |",
             "|---|---|---|---|---|"]
    for name in ("model", "floor"):
        m = s2[name]
        lines.append(f"| {name} | {m['loss']:.3f} | {m['acc_top1']:.3f} | {m['acc_top3']:.3f} | "
                     f"{m['exact_match']:.3f} |")
    lines += ["", f"## Stage 3 and the closed loop: {results['demos']} demonstrations", "",
              "Finetuned on the same demonstrations (a separate simulator run: scenes the videos never showed), "
              "with the same steps; `lapa` starts from the Stage 2 export, `scratch` from random init. "
              "Offline: the held-out demonstrations' steps (normalised MSE; spec target < 0.05). Closed loop: "
              f"`lapa sim eval`, {results['eval_episodes_per_task']} episodes per task family (Wilson 95% "
              "intervals).", "",
              "| arm | normalised MSE (mean action) | bin accuracy | closed-loop success | 95% interval | report |",
              "|---|---|---|---|---|---|"]
    for arm, r in results["arms"].items():
        ev = r["success"]
        lo, hi = ev["ci95"]
        lines.append(f"| {arm} | {r['nmse']:.4f} ({r['nmse_mean_action']:.4f}) | {r['acc']:.3f} | "
                     f"{ev['successes']}/{ev['episodes']} | [{100 * lo:.1f}%, {100 * hi:.1f}%] | "
                     f"[eval_{arm}/report.md](../eval_{arm}/report.md) |")
    gifs = sorted((root / "eval_lapa" / "videos").glob("*.gif"))
    if gifs:
        lines += ["", "A rollout of the LAPA policy:", "", f"![rollout](../eval_lapa/videos/{gifs[0].name})"]
    return "\n".join(lines) + "\n"


def _demo_section(timings: dict[str, float], metrics: dict[str, Any], cfg: DemoConfig) -> str:
    rows = "\n".join(f"| {name} | {sec:.1f} |" for name, sec in timings.items())
    return (f"\n## Demo pipeline\n\n{cfg.episodes} simulator episodes ({cfg.val_fraction:.0%} held out), "
            f"{cfg.image_size} px, frame offset {cfg.frame_offset}, {cfg.train_steps} training steps; "
            f"{metrics['pairs']} held-out pairs evaluated.\n\n| stage | seconds |\n|---|---|\n{rows}\n"
            f"| **total** | **{sum(timings.values()):.1f}** |\n")


def run(cfg: DemoConfig) -> int:
    """Run the pipeline on simulator data and print the report's directory on the last line.

    Example: `lapa demo output_dir=runs/demo episodes=60 train_steps=800` (re-running resumes).
    """
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"lapa demo: writing to {root.resolve()}", flush=True)
    timings: dict[str, float] = {}
    for name, thunk in stages(cfg) + (policy_stages(cfg) if cfg.policy_stages else []):
        run_stage(name, timings, thunk)

    report_dir = root / "report"
    metrics = json.loads((report_dir / "metrics.json").read_text())
    report = report_dir / "report.md"
    policy = policy_results(cfg) if cfg.policy_stages else None
    extra = _policy_section(policy, root) if policy else ""
    write_text_atomic(report, report.read_text() + extra + _demo_section(timings, metrics, cfg))
    write_json_atomic(report_dir / "demo_summary.json", {
        "timings_s": timings, "total_s": round(sum(timings.values()), 1),
        "reconstruction": metrics["reconstruction"], "controllability": metrics["controllability"],
        "perplexity_per_position": metrics["codebook"]["perplexity_per_position"],
        "action": {k: v for k, v in (metrics["action"] or {}).items()
                   if k in ("nmi", "nmi_shuffled", "nmi_adjusted", "probe_accuracy", "probe_accuracy_shuffled",
                            "probe_majority_baseline", "ridge_r2", "ridge_r2_shuffled")},
        "verdict": metrics["verdict"], "policy": policy})
    print(f"\nlapa demo: stage seconds {timings}, total {sum(timings.values()):.1f} s")
    print(f"lapa demo: report {report}")
    print(report_dir.resolve())
    return 0
