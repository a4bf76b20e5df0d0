"""`lapa eval-policy policy=DIR shards=DIR output=DIR`: a policy's actions against recorded ones, offline.

Every step of the robot-step shards (`KEY.jpg`, `KEY.txt`, `KEY.action.npy`, `KEY.json`; e.g. the `val`
demos of `lapa sim generate`) goes through the policy as a camera frame would (uint8 [H, W, 3] + the
instruction; batched through `predict_actions` when the policy has it, else `predict_action` one by one).
Writes DIR/metrics.json and DIR/report.md with, per action dimension, MSE and L1 in the action's units,
and when the policy carries action statistics (a LAPAPolicy) normalised by the dimension's range (the
Stage 3 validation measure, spec target MSE < 0.05), next to the error of always predicting the training
mean action; plus DIR/episodes/*.png: predicted (red) and recorded (black) actions over the steps of the
first `plot_episodes` episodes.

Stateless: every step is predicted from its own frame (`predict_actions`), so chunked policies are
measured on the first action of each chunk, as the Stage 3 validation measures them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lapa.config import ConfigError, require, to_dict
from lapa.data.images import decode_jpeg
from lapa.data.robot_steps import IMAGE, fields
from lapa.data.shards import list_shards, require_shards
from lapa.data.tar_reader import shard_samples
from lapa.io import write_json_atomic, write_text_atomic
from lapa.pictures import save_png
from lapa.policy import get_policy
from lapa.vla.action_tokenizer import ACTION_NAMES

NAMES = ACTION_NAMES  # x y z roll pitch yaw gripper


@dataclass
class EvalPolicyConfig:
    """Settings of `lapa eval-policy` (conf/eval_policy.yaml)."""

    policy: str = ""  # an export directory (or a registered policy name)
    shards: str = ""  # robot-step shards: a directory, a glob or a comma-separated list
    output: str = ""  # DIR for metrics.json, report.md and episodes/
    batch_size: int = 32
    max_episodes: int = 0  # 0: every episode
    plot_episodes: int = 3
    device: str = "auto"

    def __post_init__(self) -> None:
        require(bool(self.policy), "policy", self.policy, "set policy=EXPORT_DIR")
        require(bool(self.shards), "shards", self.shards, "set shards=DIR of robot-step shards")
        require(bool(self.output), "output", self.output, "set output=DIR")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.max_episodes >= 0, "max_episodes", self.max_episodes, "must be >= 0 (0: all)")
        require(self.plot_episodes >= 0, "plot_episodes", self.plot_episodes, "must be >= 0")

    def check_inputs(self) -> None:
        require_shards("shards", self.shards, "robot-step shards (write them with `lapa sim generate`)")


def read_steps(shards: str, max_episodes: int = 0) -> dict[str, list[dict]]:
    """Episode id -> its steps in step order: {"step", "image" uint8 [H, W, 3], "text", "action" [7]}.
    Steps with a missing or corrupt part are left out (as the training loader leaves them out)."""
    episodes: dict[str, list[dict]] = defaultdict(list)
    for url in list_shards(shards):
        with open(url, "rb") as stream:
            for sample in shard_samples(stream, url, on_error=lambda err: None):
                row = fields(sample)
                if row is None or IMAGE not in sample:
                    continue
                if max_episodes and row["episode_id"] not in episodes and len(episodes) >= max_episodes:
                    continue
                episodes[row["episode_id"]].append({"step": row["step"], "image": decode_jpeg(sample[IMAGE]),
                                                    "text": row["text"], "action": row["action"]})
    for steps in episodes.values():
        steps.sort(key=lambda s: s["step"])
    return dict(episodes)


def predict_all(policy: Any, steps: list[dict], batch_size: int) -> np.ndarray:
    """float32 [N, 7]: the policy's action for every step (batched when it can)."""
    batched = getattr(policy, "predict_actions", None)
    out = []
    for i in range(0, len(steps), batch_size):
        chunk = steps[i:i + batch_size]
        images, texts = [s["image"] for s in chunk], [s["text"] for s in chunk]
        if callable(batched):
            out.append(np.asarray(batched(images, texts), dtype=np.float32))
        else:
            out.append(np.stack([np.asarray(policy.predict_action(im, t), np.float32) for im, t in zip(images, texts)]))
    return np.concatenate(out)


def action_errors(pred: np.ndarray, true: np.ndarray, tokenizer: Any = None) -> dict[str, Any]:
    """Per-dimension MSE / L1 of pred vs true [N, 7]; normalised ones (and the mean action's) with a tokenizer."""
    err = pred.astype(np.float64) - true
    out: dict[str, Any] = {"steps": int(len(true)),
                           "mse": dict(zip(NAMES, (err ** 2).mean(0).tolist())),
                           "l1": dict(zip(NAMES, np.abs(err).mean(0).tolist()))}
    if tokenizer is not None:
        npred, ntrue = tokenizer.normalize(pred), tokenizer.normalize(true)
        nmean = tokenizer.normalize(np.array([d.mean for d in tokenizer.dims], dtype=np.float32))
        nsq = (npred - ntrue).astype(np.float64) ** 2
        out["nmse"] = dict(zip(NAMES, nsq.mean(0).tolist()))
        out["nl1"] = dict(zip(NAMES, np.abs(npred - ntrue).mean(0).tolist()))
        out["nmse_all"] = float(nsq.mean())
        out["nmse_mean_action_all"] = float(((nmean[None] - ntrue).astype(np.float64) ** 2).mean())
    out["mse_all"] = float((err ** 2).mean())
    return out


def episode_picture(pred: np.ndarray, true: np.ndarray, title: str, cell: int = 150, height: int = 90) -> Image.Image:
    """Recorded (black) and predicted (red) action per dimension over an episode's steps, one panel each."""
    pad, label = 6, 14
    img = Image.new("RGB", (len(NAMES) * (cell + pad) + pad, height + 2 * label + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((pad, 1), title, fill=(20, 20, 20))
    for d, name in enumerate(NAMES):
        x0, y0 = pad + d * (cell + pad), 2 * label + pad
        lo, hi = float(min(pred[:, d].min(), true[:, d].min())), float(max(pred[:, d].max(), true[:, d].max()))
        span = hi - lo if hi > lo else 1.0
        draw.rectangle([x0, y0, x0 + cell, y0 + height], outline=(170, 170, 170))
        draw.text((x0 + 2, label + 1), name, fill=(20, 20, 20))
        for series, colour in ((true, (20, 20, 20)), (pred, (210, 40, 40))):
            xs = np.linspace(x0 + 2, x0 + cell - 2, num=max(len(series), 2))
            ys = y0 + height - 2 - (series[:, d] - lo) / span * (height - 4)
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=1)
    return img


def _table(errors: dict[str, Any]) -> str:
    head = "| dimension | MSE | L1 |" + (" normalised MSE | normalised L1 |" if "nmse" in errors else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in NAMES:
        row = f"| {name} | {errors['mse'][name]:.5f} | {errors['l1'][name]:.5f} |"
        if "nmse" in errors:
            row += f" {errors['nmse'][name]:.4f} | {errors['nl1'][name]:.4f} |"
        lines.append(row)
    return "\n".join(lines)


def run(cfg: EvalPolicyConfig) -> int:
    """Offline action errors of policy=DIR on robot-step shards=...; writes output=DIR/metrics.json,
    report.md and per-episode plots."""
    t0 = time.perf_counter()
    out = Path(cfg.output)
    policy = get_policy(cfg.policy, device=cfg.device)
    episodes = read_steps(cfg.shards, cfg.max_episodes)
    steps = [s for eps in episodes.values() for s in eps]
    if not steps:
        raise ConfigError(f"shards={cfg.shards!r}: no valid robot steps (jpg, txt, action.npy, json)")
    print(f"lapa eval-policy: {cfg.policy} on {len(episodes)} episodes ({len(steps)} steps) -> {out}")
    pred = predict_all(policy, steps, cfg.batch_size)
    true = np.stack([s["action"] for s in steps]).astype(np.float32)
    errors = action_errors(pred, true, getattr(policy, "tokenizer", None))
    plots, start = [], 0
    for n, (episode, eps) in enumerate(episodes.items()):
        if n < cfg.plot_episodes:
            name = f"episodes/{episode}.png"
            save_png(episode_picture(pred[start:start + len(eps)], true[start:start + len(eps)],
                                     f"{episode}: \"{eps[0]['text']}\" (black: recorded, red: predicted)"), out / name)
            plots.append(name)
        start += len(eps)
    info = getattr(policy, "info", None)
    metrics = {"policy": cfg.policy, "shards": cfg.shards, "episodes": len(episodes), **errors, "plots": plots,
               "seconds": round(time.perf_counter() - t0, 2), "config": to_dict(cfg),
               "policy_info": info() if callable(info) else None}
    write_json_atomic(out / "metrics.json", metrics)
    summary = (f"normalised MSE {errors['nmse_all']:.4f} (spec target < 0.05; the training mean action gives "
               f"{errors['nmse_mean_action_all']:.4f})" if "nmse_all" in errors else f"MSE {errors['mse_all']:.5f}")
    report = [f"# Offline action errors: `{cfg.policy}`", "", f"{len(steps)} steps of {len(episodes)} episodes in "
              f"`{cfg.shards}`; {summary}.", "", _table(errors), ""]
    report += [f"![{p}]({p})\n" for p in plots]
    write_text_atomic(out / "report.md", "\n".join(report))
    print(_table(errors))
    print(f"  {summary}\n  wrote {out}/metrics.json, report.md and {len(plots)} episode plots "
          f"({metrics['seconds']:.1f} s)")
    return 0
