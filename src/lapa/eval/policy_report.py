"""The report of a closed-loop evaluation (`lapa sim eval`): DIR/report.md with the success table, pictures
of kept rollouts (a filmstrip PNG of each, an animated GIF of the first success and the first failure),
links to their videos, and what was evaluated.

Which rollouts are kept: every episode's video is written by its worker; afterwards, per task family in
episode order, the first `videos_per_task` successes and the first `videos_per_task` failures are kept and
the others deleted (`choose_videos`), so the report shows both outcomes whatever the success rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lapa.io import write_text_atomic
from lapa.pictures import tile

FILMSTRIP_FRAMES = 6  # frames per filmstrip, evenly spaced from the first to the last


def filmstrip(frames: np.ndarray, count: int = FILMSTRIP_FRAMES) -> Image.Image:
    """uint8 frames [T, H, W, 3] -> one row of `count` evenly spaced frames (first and last included)."""
    index = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
    return tile([[frames[i] for i in index]], col_labels=[f"t={i}" for i in index])


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    """An animated GIF of uint8 frames [T, H, W, 3] (plays inline in Markdown viewers)."""
    images = [Image.fromarray(f) for f in frames]
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)


def choose_videos(episodes: list[dict], per_outcome: int) -> set[int]:
    """Indices into `episodes` whose videos to keep: per family, the first `per_outcome` successes and the
    first `per_outcome` failures in episode order."""
    keep: set[int] = set()
    seen: dict[tuple[str, bool], int] = {}
    for j in sorted(range(len(episodes)), key=lambda j: (episodes[j]["family"], episodes[j]["index"])):
        key = (episodes[j]["family"], bool(episodes[j]["success"]))
        if seen.get(key, 0) < per_outcome:
            seen[key] = seen.get(key, 0) + 1
            keep.add(j)
    return keep


def read_frames(path: Path) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of a video file."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(results: dict[str, Any], policy_info: dict[str, Any] | None) -> str:
    """The report's text: the success table with Wilson 95% intervals, the kept rollouts, the setup."""
    lines = [f"# Closed-loop evaluation: `{results['policy']}`", "",
             f"{results['episodes_per_task']} episodes per task family, seeds "
             f"{results['seeds'][0]}..{results['seeds'][1]} (never the seeds of `lapa sim generate` demos), "
             f"at most {results['config']['max_steps']} steps each; {results['seconds']:.1f} s.", "",
             "| task | successes | rate | 95% interval (Wilson) | mean steps |", "|---|---|---|---|---|"]
    rows = list(results["families"].items()) + [("**overall**", results["overall"])]
    for name, s in rows:
        lo, hi = s["ci95"]
        lines.append(f"| {name} | {s['successes']}/{s['episodes']} | {_pct(s['success_rate'])} | "
                     f"[{_pct(lo)}, {_pct(hi)}] | {s['mean_steps']:.1f} |")
    kept = [ep for ep in results["episodes"] if ep.get("video")]
    if kept:
        lines += ["", "## Rollouts", "", "Filmstrips of the kept rollouts (first successes and first failures "
                  "of each family); the links open the videos."]
        for ep in kept:
            outcome = "success" if ep["success"] else "failure"
            gif = f"\n\n![{outcome}]({ep['gif']})" if ep.get("gif") else ""
            lines += ["", f"**{ep['family']} #{ep['index']}** ({outcome}, {ep['steps']} steps, seed {ep['seed']}): "
                          f"\"{ep['instruction']}\" - [video]({ep['video']}){gif}", "",
                      f"![{ep['family']} {ep['index']}]({ep['filmstrip']})"]
    if policy_info:
        lines += ["", "## Policy", "", "```json", json.dumps(policy_info, indent=2, default=str)[:4000], "```"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, results: dict[str, Any], policy_info: dict[str, Any] | None) -> Path:
    """DIR/report.md (atomic); the pictures it shows were written next to the videos by the workers."""
    path = out_dir / "report.md"
    write_text_atomic(path, markdown(results, policy_info))
    return path
