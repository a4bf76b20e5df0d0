"""The report of `lapa experiment`: OUTPUT/experiment/metrics.json, report.md and success_vs_n.png.

Per arm and N: the success of every training seed's policy (each over the same evaluation episodes), their
mean, and a Wilson 95% interval of the pooled episodes (seeds x families x episodes); the same per task
family; the offline normalised MSE of each finetuning; beside them the LAQ's latent quality (eval-laq), the
Stage 2 accuracy of each pretrained arm against its floor, and the wall time of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lapa.eval.metrics import wilson_interval
from lapa.experiment.config import ExperimentConfig
from lapa.io import write_json_atomic, write_text_atomic
from lapa.pictures import save_png

COLOURS = {"scratch": (110, 110, 110), "lapa": (210, 40, 40), "actions": (40, 90, 200), "shuffled": (40, 160, 80)}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every run's figures and their aggregates per (arm, N)."""
    root = Path(cfg.output_dir)
    runs, cells = [], {}
    for arm, n, seed in cfg.runs():
        out = root / "runs" / f"{arm}_n{n}_s{seed}"
        ev, ft = _read(out / "eval" / "metrics.json"), _read(out / "summary.json")
        if ev is None:
            continue
        runs.append({"arm": arm, "n": n, "seed": seed, "success": ev["overall"]["success_rate"],
                     "successes": ev["overall"]["successes"], "episodes": ev["overall"]["episodes"],
                     "families": {f: [s["successes"], s["episodes"]] for f, s in ev["families"].items()},
                     "nmse": (ft or {}).get("final_val", {}).get("nmse"), "report": f"runs/{out.name}/eval/report.md"})
    for arm in cfg.arms:
        for n in cfg.ns:
            mine = [r for r in runs if r["arm"] == arm and r["n"] == n]
            if not mine:
                continue
            k, total = sum(r["successes"] for r in mine), sum(r["episodes"] for r in mine)
            families = {}
            for f in mine[0]["families"]:
                fk, fn = sum(r["families"][f][0] for r in mine), sum(r["families"][f][1] for r in mine)
                families[f] = {"rate": fk / fn, "ci95": list(wilson_interval(fk, fn))}
            nmse = [r["nmse"] for r in mine if r["nmse"] is not None]
            cells[f"{arm}/{n}"] = {"arm": arm, "n": n, "seeds": len(mine), "mean_success": float(np.mean(
                [r["success"] for r in mine])), "per_seed": [r["success"] for r in mine], "pooled": [k, total],
                "ci95": list(wilson_interval(k, total)), "families": families,
                "mean_nmse": float(np.mean(nmse)) if nmse else None}
    stage2 = {}
    for arm in cfg.arms:
        s = _read(root / f"stage2_{arm}" / "summary.json")
        if s is not None:
            stage2[arm] = {"steps": s["steps"], "model": s["final_val"], "floor": s["final_val_floor"]}
    laq = _read(root / "report" / "metrics.json")
    return {"runs": runs, "cells": cells, "stage2": stage2,
            "laq": None if laq is None else {k: laq.get(k) for k in ("reconstruction", "controllability", "verdict")}
            | {"action": {k: v for k, v in (laq.get("action") or {}).items() if not isinstance(v, (list, dict))}}}


def success_picture(cfg: ExperimentConfig, cells: dict[str, Any], size: tuple[int, int] = (520, 320)) -> Image.Image:
    """Mean success vs N, one line per arm, with the pooled Wilson intervals as bars."""
    w, h = size
    left, right, top, bottom = 50, 110, 20, 40
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    ns = sorted(cfg.ns)
    x_of = {n: left + (i + 0.5) * (w - left - right) / len(ns) for i, n in enumerate(ns)}

    def y_of(rate: float) -> float:
        return top + (1 - rate) * (h - top - bottom)

    draw.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([left - 4, y_of(tick), left, y_of(tick)], fill=(60, 60, 60))
        draw.text((4, y_of(tick) - 6), f"{100 * tick:.0f}%", fill=(40, 40, 40))
    for n in ns:
        draw.text((x_of[n] - 10, h - bottom + 6), f"N={n}", fill=(40, 40, 40))
    for j, arm in enumerate(cfg.arms):
        colour = COLOURS.get(arm, (0, 0, 0))
        points = [(x_of[n] + 3 * j, cells[f"{arm}/{n}"]) for n in ns if f"{arm}/{n}" in cells]
        for x, c in points:
            lo, hi = c["ci95"]
            draw.line([x, y_of(lo), x, y_of(hi)], fill=colour, width=1)
            draw.ellipse([x - 3, y_of(c["mean_success"]) - 3, x + 3, y_of(c["mean_success"]) + 3], fill=colour)
        if len(points) > 1:
            draw.line([(x, y_of(c["mean_success"])) for x, c in points], fill=colour, width=2)
        draw.text((w - right + 10, top + 16 * j), arm, fill=colour)
    draw.text((left, 3), "closed-loop success (mean over seeds; bars: pooled 95% interval)", fill=(20, 20, 20))
    return img


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(cfg: ExperimentConfig, data: dict[str, Any], timings: dict[str, float]) -> str:
    cells = data["cells"]
    lines = ["# The LAPA effect: closed-loop success vs number of demonstrations", "",
             f"Arms {', '.join(cfg.arms)}; N in {cfg.ns}; training seeds {cfg.train_seeds}; {cfg.finetune_steps} "
             f"finetuning steps; {cfg.eval_episodes} episodes per task family per policy (seeds {cfg.eval_seed}.."
             f"{cfg.eval_seed + cfg.eval_episodes - 1}); Stage 2 {cfg.vla_steps} steps on {cfg.video_episodes} "
             f"action-free videos; {cfg.image_size} px.", "", "![success vs N](success_vs_n.png)", "",
             "| arm | N | mean success | per seed | pooled | 95% interval | offline nMSE |",
             "|---|---|---|---|---|---|---|"]
    for c in cells.values():
        lines.append(f"| {c['arm']} | {c['n']} | {_pct(c['mean_success'])} | "
                     f"{', '.join(_pct(x) for x in c['per_seed'])} | {c['pooled'][0]}/{c['pooled'][1]} | "
                     f"[{_pct(c['ci95'][0])}, {_pct(c['ci95'][1])}] | "
                     f"{'-' if c['mean_nmse'] is None else format(c['mean_nmse'], '.4f')} |")
    families = sorted({f for c in cells.values() for f in c["families"]})
    if families:
        lines += ["", "Per task family (pooled over seeds):", "", "| arm | N | " + " | ".join(families) + " |",
                  "|---|---|" + "---|" * len(families)]
        for c in cells.values():
            lines.append(f"| {c['arm']} | {c['n']} | " + " | ".join(_pct(c["families"][f]["rate"]) for f in families)
                         + " |")
    if data["stage2"]:
        lines += ["", "Stage 2 on the held-out videos (model / most-frequent-label floor):", "",
                  "| arm | val loss | top-1 | exact match |", "|---|---|---|---|"]
        for arm, s in data["stage2"].items():
            m, f = s["model"], s["floor"]
            lines.append(f"| {arm} | {m['loss']:.3f} / {f['loss']:.3f} | {m['acc_top1']:.3f} / {f['acc_top1']:.3f} | "
                         f"{m['exact_match']:.3f} / {f['exact_match']:.3f} |")
    if data["laq"]:
        lines += ["", "The LAQ's latent quality (`lapa eval-laq`, full report in `../report/report.md`):", "",
                  "```json", json.dumps(data["laq"], indent=1)[:3000], "```"]
    lines += ["", "Rollouts: each run's `runs/<arm>_n<N>_s<seed>/eval/report.md` (filmstrips, videos, a GIF).", "",
              "Wall time per stage (s):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in timings.items()]
    lines.append(f"| **total** | **{sum(timings.values()):.1f}** |")
    return "\n".join(lines) + "\n"


def write(cfg: ExperimentConfig, timings: dict[str, float], wall: float) -> Path:
    """Write the report folder and return it."""
    out = Path(cfg.output_dir) / "experiment"
    data = collect(cfg)
    save_png(success_picture(cfg, data["cells"]), out / "success_vs_n.png")
    write_json_atomic(out / "metrics.json", {**data, "timings_s": timings, "wall_s_this_call": round(wall, 1),
                                              "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}})
    write_text_atomic(out / "report.md", markdown(cfg, data, timings))
    for c in data["cells"].values():
        print(f"  {c['arm']:>8} N={c['n']:<3} success {_pct(c['mean_success']):>6} (seeds {c['per_seed']}), "
              f"95% [{_pct(c['ci95'][0])}, {_pct(c['ci95'][1])}]")
    return out
