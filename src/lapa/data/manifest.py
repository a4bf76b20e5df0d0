"""Side information for ingest: the manifest (video -> instruction) and the action sidecar.

Manifest (`manifest.jsonl` or `manifest.csv`): one record per video with at least `video` (a path
relative to the manifest's folder) and optionally `instruction`, `task`, `fps` (used for image-sequence
folders, which carry no frame rate) and any other fields (ignored).

Sidecar (`DIR/<video stem>.npz`, written by `lapa sim generate`): `actions` float32 `[T-1, 7]`, action i
takes frame i to frame i+1. The action of a pair over source frames a -> b is the sum of
`actions[a:b, :6]` (end-effector deltas add up) and the gripper command of the last step `actions[b-1, 6]`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ManifestError(ValueError):
    """A manifest that cannot be parsed; the message names the file and line."""


@dataclass(frozen=True)
class ManifestEntry:
    instruction: str | None = None
    task: str | None = None
    fps: float | None = None


def find_manifest(input_dir: str | os.PathLike) -> Path | None:
    """`input/manifest.jsonl` or `input/manifest.csv` when present (JSONL first)."""
    for name in ("manifest.jsonl", "manifest.csv"):
        candidate = Path(input_dir) / name
        if candidate.is_file():
            return candidate
    return None


def load_manifest(path: str | os.PathLike) -> dict[Path, ManifestEntry]:
    """Entries keyed by the video's resolved absolute path."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    base = path.parent
    records: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "video" not in reader.fieldnames:
                raise ManifestError(f"{path}: the header needs a 'video' column, got {reader.fieldnames}")
            records = [(i + 2, dict(row)) for i, row in enumerate(reader)]
    else:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{path}:{line_no}: not valid JSON ({err})") from None
                if not isinstance(record, dict):
                    raise ManifestError(f"{path}:{line_no}: expected a JSON object")
                records.append((line_no, record))
    entries: dict[Path, ManifestEntry] = {}
    for line_no, record in records:
        video = record.get("video")
        if not video:
            raise ManifestError(f"{path}:{line_no}: missing 'video'")
        fps = record.get("fps")
        try:
            fps = float(fps) if fps not in (None, "") else None
        except ValueError:
            raise ManifestError(f"{path}:{line_no}: fps={fps!r} is not a number") from None
        instruction = record.get("instruction")
        task = record.get("task")
        entries[(base / str(video)).resolve()] = ManifestEntry(
            instruction=str(instruction) if instruction not in (None, "") else None,
            task=str(task) if task not in (None, "") else None,
            fps=fps if fps and fps > 0 else None)
    return entries


def load_sidecar_actions(path: str | os.PathLike) -> np.ndarray:
    """The `actions` array `[T-1, 7]` float32 of a sidecar file; ValueError when malformed."""
    with np.load(path, allow_pickle=False) as data:
        if "actions" not in data:
            raise ValueError(f"{path}: no 'actions' array (has {sorted(data.keys())})")
        actions = np.asarray(data["actions"], dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise ValueError(f"{path}: actions must have shape [T-1, 7], got {list(actions.shape)}")
    return actions


def pair_action(actions: np.ndarray, a: int, b: int) -> np.ndarray:
    """float32 [7] action of source frames a -> b: summed deltas, last gripper command."""
    if not 0 <= a < b <= len(actions):
        raise ValueError(f"pair {a}->{b} outside the {len(actions)} recorded actions")
    out = np.empty(7, dtype=np.float32)
    out[:6] = actions[a:b, :6].sum(axis=0)
    out[6] = actions[b - 1, 6]
    return out
