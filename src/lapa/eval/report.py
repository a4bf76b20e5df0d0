"""The Stage 1 report of `lapa eval-laq`: PNG pictures (PIL only) and report.md + metrics.json.

Pictures:
- recon_grid.png: one row per example pair: frame t | true frame t+1 | reconstruction | |error| x4;
- code_usage.png: a bar chart of code usage per position;
- atlas_<i>.png: the latent action atlas of one frame: row p, column k = the decoder's next frame when
  position p holds code k and the other positions keep the inferred codes (inferred cell framed red);
  atlas_<i>_change.png: the same as changes from frame t (grey = unchanged).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from lapa.io import write_json_atomic, write_text_atomic
from lapa.pictures import BG, INK, LABEL_H, save_png, tile, to_uint8


def recon_grid(first: torch.Tensor, target: torch.Tensor, recon: torch.Tensor) -> Image.Image:
    """Rows of frame t, frame t+1, reconstruction and the absolute error amplified 4x (`[N, 3, H, W]` each)."""
    rows = []
    for f, t, r in zip(first, target, recon):
        err = ((r.clamp(0, 1) - t).abs() * 4).clamp(0, 1)
        rows.append([to_uint8(f), to_uint8(t), to_uint8(r), to_uint8(err)])
    return tile(rows, col_labels=["frame t", "frame t+1", "reconstruction", "|error| x4"])


def atlas_image(first: torch.Tensor, target: torch.Tensor, grid: torch.Tensor, codes: torch.Tensor,
                change: bool = False) -> Image.Image:
    """Latent action atlas: grid `[L, K, 3, H, W]`; the first two columns show frame t and the true t+1.

    `change=True` shows what each prediction changes, `0.5 + 2 (frame - frame t)` (grey = unchanged),
    which makes small motions visible.
    """
    def show(img: torch.Tensor) -> np.ndarray:
        return to_uint8((0.5 + 2 * (img.clamp(0, 1) - first)).clamp(0, 1) if change else img)

    length, k = grid.shape[:2]
    blank = np.full_like(to_uint8(first), 255)
    rows = []
    for p in range(length):
        lead = [to_uint8(first), show(target)] if p == 0 else [blank, blank]
        rows.append(lead + [show(grid[p, c]) for c in range(k)])
    highlight = {(p, 2 + int(codes[p])) for p in range(length)}
    return tile(rows, col_labels=["frame t", "true t+1"] + [f"code {c}" for c in range(k)],
                row_labels=[f"p{p}" for p in range(length)], highlight=highlight)


def usage_chart(counts: np.ndarray, bar_w: int = 14, height: int = 110) -> Image.Image:
    """Bar chart of code usage: one panel per position, one bar per code (counts `[L, K]`), with a y-axis
    in percent of the pairs (all panels share its scale)."""
    length, k = counts.shape
    panel_w = k * (bar_w + 2) + 16
    axis_w = 44
    canvas = Image.new("RGB", (axis_w + length * panel_w + 8, height + 3 * LABEL_H + 8), BG)
    draw = ImageDraw.Draw(canvas)
    peak = max(int(counts.max()), 1)
    total = max(int(counts[0].sum()), 1)  # pairs (each position codes every pair once)
    base = LABEL_H + height
    draw.line([axis_w - 4, LABEL_H, axis_w - 4, base], fill=INK)
    for frac in (0.0, 0.5, 1.0):
        y = base - int(round(height * frac))
        draw.line([axis_w - 7, y, axis_w - 4, y], fill=INK)
        draw.text((2, max(0, y - 6)), f"{100 * frac * peak / total:.0f}%", fill=INK)
    draw.text((2, base + LABEL_H + 2), "share of pairs per code", fill=INK)
    for p in range(length):
        x0 = axis_w + p * panel_w
        draw.text((x0, 1), f"position {p}", fill=INK)
        base = LABEL_H + height
        draw.line([x0, base, x0 + k * (bar_w + 2), base], fill=INK)
        for c in range(k):
            bar = int(round(height * counts[p, c] / peak))
            x = x0 + c * (bar_w + 2)
            if bar:
                draw.rectangle([x, base - bar, x + bar_w - 1, base - 1], fill=(60, 110, 200))
            draw.text((x + 3, base + 2), str(c), fill=INK)
    return canvas


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(metrics: dict[str, Any], atlas_files: list[str]) -> str:
    """The report text: verdict, tables and the pictures."""
    rec, ctl, cb, act, ver = (metrics[k] for k in ("reconstruction", "controllability", "codebook",
                                                     "action", "verdict"))
    beats = "beats" if ver["beats_copy_baseline"] else "does NOT beat"
    uses = "does" if ver["controllable"] else "does NOT"
    verdict = [
        f"- Reconstruction: the LAQ predicts frame t+1 at **{rec['psnr']:.2f} dB** PSNR against "
        f"{rec['copy_psnr']:.2f} dB for copying frame t: it **{beats}**"
        f" the copy baseline ({rec['psnr_gain_over_copy']:+.2f} dB).",
        f"- Controllability: replacing the inferred latent action by another pair's changes the PSNR by "
        f"{ctl['delta_psnr']:+.2f} dB: the decoder {uses} use the latent action "
        f"(criterion: at least {ver['min_delta_psnr']} dB).",
    ]
    if act is None:
        verdict.append("- No ground-truth actions in these shards (ingest with `sidecar=`): action "
                       "information was not measured.")
    else:
        verdict.append(
            f"- Action information: NMI {act['nmi']:.3f} vs {act['nmi_shuffled']:.3f} shuffled, probe accuracy "
            f"{act['probe_accuracy']:.3f} vs {act['probe_accuracy_shuffled']:.3f} shuffled: the latent actions "
            f"**{'carry' if ver['latents_carry_action_information'] else 'do NOT clearly carry'}** information "
            f"about the true action (criterion: both at least {ver['min_margin']} above the shuffled baseline).")
    lines = [f"# LAQ evaluation: {metrics['pairs']} held-out frame pairs", "",
             f"Checkpoint `{metrics.get('checkpoint', '')}`, shards `{metrics.get('shards', '')}`, "
             f"image size {metrics.get('image_size', '')}.", "", "## Verdict", "", *verdict, "",
             "## Reconstruction of frame t+1", "", "| measure | LAQ | copy frame t |", "|---|---|---|",
             f"| MSE | {rec['mse']:.5f} | {rec['copy_mse']:.5f} |",
             f"| PSNR (dB, from mean MSE) | {rec['psnr']:.2f} | {rec['copy_psnr']:.2f} |", "",
             "![reconstructions](recon_grid.png)", "", "## Controllability (delta-t PSNR)", "",
             "| latent action | PSNR (dB) |", "|---|---|",
             f"| inferred | {ctl['psnr_inferred_latent']:.2f} |",
             f"| random other pair's | {ctl['psnr_random_latent']:.2f} |",
             f"| **delta** | **{ctl['delta_psnr']:+.2f}** |", "", "## Codebook", "",
             "| position | perplexity | utilisation |", "|---|---|---|"]
    lines += [f"| {p} | {px:.2f} / {cb['codebook_size']} | {u:.0%} |" for p, (px, u) in
              enumerate(zip(cb["perplexity_per_position"], cb["utilisation_per_position"]))]
    lines += ["", f"Distinct {cb['code_seq_len']}-token latent actions: **{cb['distinct_latent_actions']}** "
              f"(of {cb['codebook_size'] ** cb['code_seq_len']} possible; perplexity "
              f"{cb['latent_action_perplexity']:.1f}). Most used:", "", "| codes | pairs |", "|---|---|"]
    lines += [f"| {' '.join(map(str, c['codes']))} | {c['count']} |" for c in cb["top_latent_actions"]]
    lines += ["", "![code usage](code_usage.png)", ""]
    if act is not None:
        d = act["discretisation"]
        lines += ["## Does the latent action carry the true action?", "",
                  f"True pair actions discretised into {d['bins']} quantile bins on dims {d['dims']} "
                  f"({d['classes_used']} classes used). NMI uses the arithmetic mean of the entropies; the "
                  "probes see the one-hot latent codes and are scored on a held-out split.", "",
                  "| measure | latent action | shuffled labels |", "|---|---|---|",
                  f"| NMI(latent action, action class) | {_f(act['nmi'])} | {_f(act['nmi_shuffled'])} |",
                  f"| logistic probe accuracy | {_f(act['probe_accuracy'])} | {_f(act['probe_accuracy_shuffled'])} |",
                  f"| ridge probe R^2 (continuous action) | {_f(act['ridge_r2'])} | {_f(act['ridge_r2_shuffled'])} |",
                  "", f"Majority-class accuracy on the held-out split: {_f(act['probe_majority_baseline'])}. "
                  f"NMI per position: {', '.join(_f(v) for v in act['nmi_per_position'])}.", ""]
    if atlas_files:
        lines += ["## Latent action atlas", "",
                  "Row p, column k: the decoder's next frame when position p holds code k and the other "
                  "positions keep the inferred codes (framed red). Below each, the same as changes from "
                  "frame t (grey: unchanged; the second column is the true change).", ""]
        for i, name in enumerate(atlas_files):
            lines += [f"![atlas {i}]({name})", "", f"![atlas {i} change]({name[:-4]}_change.png)", ""]
        lines += [""]
    lines += [f"Evaluated in {metrics.get('seconds', 0)} s. All numbers: `metrics.json`.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, metrics: dict[str, Any], examples: tuple[torch.Tensor, ...],
                 atlases: list[torch.Tensor]) -> Path:
    """Write the pictures, metrics.json and report.md into `out_dir`; returns `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    first, target, recon, codes = examples
    save_png(recon_grid(first, target, recon), out_dir / "recon_grid.png")
    save_png(usage_chart(np.asarray(metrics["codebook"]["code_histogram"])), out_dir / "code_usage.png")
    atlas_files = []
    for i, grid in enumerate(atlases):
        name = f"atlas_{i}.png"
        save_png(atlas_image(first[i], target[i], grid, codes[i]), out_dir / name)
        save_png(atlas_image(first[i], target[i], grid, codes[i], change=True), out_dir / f"atlas_{i}_change.png")
        atlas_files.append(name)
    write_json_atomic(out_dir / "metrics.json", json.loads(json.dumps(metrics, default=float)))
    write_text_atomic(out_dir / "report.md", markdown(metrics, atlas_files))
    return out_dir
