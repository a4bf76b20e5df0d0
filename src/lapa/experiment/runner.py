"""The stages of `lapa experiment`, each resumable (a finished output is kept), and `run`.

    Stage 1 (as `lapa demo`): videos -> frame pairs -> LAQ -> latent labels (train, val) -> eval-laq
    control labels: binned true actions / shuffled latents (`relabel`), for the arms that use them
    Stage 2: lapa train-vla per pretrained arm (lapa: latents; actions: true actions; shuffled)
    demonstrations: lapa sim generate with seed + 1 (world seeds disjoint from the videos' and the evaluation's)
    per (arm, N, train seed): lapa finetune (N demonstrations drawn by the train seed; the same N for every
    arm) -> lapa sim eval (the same evaluation seeds for every run)
    report (`report.write`)

Layout under output_dir: sim/, pairs/, laq/, latent/, report/ (Stage 1, as the demo's), labels_<arm>/,
stage2_<arm>/, robot/ (demonstrations), runs/<arm>_n<N>_s<seed>/ (finetune run, export/, eval/),
experiment/ (metrics.json, report.md, success_vs_n.png); the last printed line is that folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lapa.demo import (
    DemoConfig,
    evaluate_closed_loop,
    finetune_on_demos,
    generate_demos,
    label_pairs,
    run_stage,
    stages,
    train_stage2,
)
from lapa.experiment.config import PRETRAINED, ExperimentConfig
from lapa.io import write_json_atomic


def run_name(arm: str, n: int, seed: int) -> str:
    return f"{arm}_n{n}_s{seed}"


def _done(path: Path, what: str) -> bool:
    if path.exists():
        print(f"experiment: {path} exists; keeping {what}")
        return True
    return False


def experiment_stages(cfg: ExperimentConfig) -> list[tuple[str, Callable[[], Any]]]:
    """(name, thunk) of every stage, in order; each thunk skips work whose output exists."""
    from lapa.experiment.relabel import relabel_shuffled, relabel_with_actions

    root = Path(cfg.output_dir)
    latent = {"train": root / "latent" / "train", "val": root / "latent" / "val"}
    stage1 = DemoConfig(output_dir=str(root), episodes=cfg.video_episodes, val_fraction=0.1, seed=cfg.seed,
                        image_size=cfg.image_size, train_steps=cfg.laq_steps, workers=cfg.workers,
                        sim_overrides=list(cfg.sim_overrides), train_overrides=list(cfg.laq_overrides))

    def labels_of(arm: str) -> Path:
        return root / "latent" if arm == "lapa" else root / f"labels_{arm}"

    def control_labels(arm: str) -> Any:
        if _done(labels_of(arm) / "summary.json", f"the {arm} labels"):
            return 0
        pairs = {split: root / "pairs" / split for split in latent}
        out = (relabel_with_actions(latent, pairs, labels_of(arm)) if arm == "actions"
               else relabel_shuffled(latent, labels_of(arm), seed=cfg.seed))
        write_json_atomic(labels_of(arm) / "summary.json", out)
        return 0

    def stage2(arm: str) -> Any:
        out = root / f"stage2_{arm}"
        if _done(out / "export" / "info.json", f"Stage 2 ({arm})"):
            return 0
        return train_stage2(labels_of(arm), out, cfg.image_size, cfg.vla_steps, cfg.seed, cfg.vla_overrides)

    def finetune_and_eval(arm: str, n: int, seed: int) -> Any:
        out = root / "runs" / run_name(arm, n, seed)
        if not _done(out / "export" / "info.json", f"the finetuning {out.name}"):
            init = "scratch" if arm == "scratch" else root / f"stage2_{arm}" / "export"
            status = finetune_on_demos(init, root / "robot" / "demos", out, n, cfg.image_size, cfg.finetune_steps,
                                       seed, episodes_seed=seed, overrides=cfg.finetune_overrides)
            if status not in (None, 0):
                return status
        if _done(out / "eval" / "metrics.json", f"the evaluation of {out.name}"):
            return 0
        return evaluate_closed_loop(out / "export", out / "eval", cfg.eval_episodes, cfg.image_size, cfg.workers,
                                    seed=cfg.eval_seed, overrides=[*cfg.sim_overrides, *cfg.sim_eval_overrides])

    pretrained = [a for a in cfg.arms if a in PRETRAINED]
    demo_seed = cfg.seed + 1 if cfg.demo_seed is None else cfg.demo_seed
    return [
        *stages(stage1),
        ("label val", lambda: label_pairs(root, "val")),
        *[(f"labels {arm}", lambda arm=arm: control_labels(arm)) for arm in pretrained if arm != "lapa"],
        *[(f"train-vla {arm}", lambda arm=arm: stage2(arm)) for arm in pretrained],
        ("sim demos", lambda: generate_demos(root / "robot", cfg.demo_pool, demo_seed, cfg.image_size, cfg.workers,
                                            cfg.sim_overrides)),
        *[(f"finetune+eval {run_name(*r)}", lambda r=r: finetune_and_eval(*r)) for r in cfg.runs()],
    ]


def run(cfg: ExperimentConfig) -> int:
    """Run (or resume) the experiment and write its report; the last printed line is the report's folder."""
    from lapa.experiment.report import write

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"lapa experiment: arms {cfg.arms}, N {cfg.ns}, seeds {cfg.train_seeds}; writing to {root.resolve()}",
          flush=True)
    timings_path = root / "experiment" / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    start = time.perf_counter()
    for name, thunk in experiment_stages(cfg):
        before = dict(timings)
        run_stage(name, timings, thunk)
        if name in before and timings[name] < 5.0:  # a resumed stage that found its work done: keep its time
            timings[name] = before[name]
        write_json_atomic(timings_path, timings)
    out = write(cfg, timings, time.perf_counter() - start)
    print(out.resolve())
    return 0
