"""The output folder of a training run, for every stage (DESIGN.md sections 6 and 12).

    <root>/config.yaml                 the resolved config of the run (`write_config`)
    <root>/checkpoints/step_N<sfx>     periodic checkpoints, N zero-padded to 8 digits
    <root>/checkpoints/last<sfx>       the newest state: what `resume=auto` continues from
    <root>/checkpoints/best<sfx>       the best state by a validation score
    <root>/summary.json                written once at the end (`write_summary`)

`<sfx>` is the checkpoint suffix: ".ckpt" for a single file, "" for a directory (a DCP checkpoint of a
sharded model, what `fabric.save` writes under ModelParallelStrategy). Stages with the Lightning
Trainer let `ModelCheckpoint` write and rotate `step_N`, `last` and `best` themselves (real files); a
plain loop (Fabric) uses `CheckpointRotation`, where `last` and `best` are relative symbolic links to
`step_N` entries: updating them is an atomic rename however big the checkpoint, and no checkpoint is
stored twice.

Every function here is for rank 0 only unless it says otherwise (only rank 0 manages files).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lapa.config import ConfigError
from lapa.io import remove_stale_temporaries, write_json_atomic, write_text_atomic

CHECKPOINT_DIR = "checkpoints"
# step_N with an optional Lightning version counter (-vK) and an optional suffix.
_STEP_NAME = re.compile(r"step_(\d+)(?:-v\d+)?(?:\.[A-Za-z0-9]+)?")


def step_of(path: str | os.PathLike) -> int | None:
    """N of a `step_N[-vK][.sfx]` name (after following symbolic links, so `last` -> its step); None for
    any other name."""
    match = _STEP_NAME.fullmatch(Path(path).resolve().name)
    return int(match.group(1)) if match else None


def resolve_resume(resume: str | os.PathLike | None, last: str | os.PathLike) -> str | None:
    """The checkpoint a run continues from: None for `resume=null`; for `resume=auto` the `last`
    checkpoint when it exists (a file, a directory or a link to one), else None (a fresh run); any other
    value is a path, returned as given (config validation checks that it exists)."""
    if resume is None:
        return None
    if str(resume) == "auto":
        return str(last) if Path(last).exists() else None
    return str(resume)


def _remove(path: Path) -> None:
    """Delete a checkpoint: a link or a file, or a directory with its contents."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def step_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The `step_N*` entries (files or directories, never links) in `ckpt_dir` as (N, path), by N."""
    found = []
    for path in Path(ckpt_dir).glob("step_*"):
        match = _STEP_NAME.fullmatch(path.name)
        if match and not path.is_symlink():
            found.append((int(match.group(1)), path))
    return sorted(found)


def drop_checkpoints_after(ckpt_dir: str | os.PathLike, step: int) -> list[Path]:
    """Delete periodic checkpoints `step_N*` with N > `step`, and links left dangling by that; returns
    the deleted paths.

    A run killed between writing `step_N` and updating `last` leaves a periodic checkpoint newer than the
    state it resumes from. The resumed run replays those steps and writes them again, and the rotation's
    bookkeeping (restored from the checkpoint) does not know the orphan, so it would never be rotated
    out. Call on rank 0 before training starts.
    """
    dropped = []
    for n, path in step_checkpoints(ckpt_dir):
        if n > step:
            _remove(path)
            dropped.append(path)
    for link in Path(ckpt_dir).glob("*"):
        if link.is_symlink() and not link.exists():
            link.unlink()
            dropped.append(link)
    return dropped


class CheckpointNames:
    """The names of a checkpoint folder's entries: `step_{N:08d}<suffix>`, `last<suffix>`, `best<suffix>`."""

    def __init__(self, directory: str | os.PathLike, suffix: str = ".ckpt") -> None:
        self.directory = Path(directory)
        self.suffix = suffix

    @property
    def last(self) -> Path:
        return self.directory / f"last{self.suffix}"

    @property
    def best(self) -> Path:
        return self.directory / f"best{self.suffix}"

    def path(self, step: int) -> Path:
        """Where the checkpoint of step `step` goes."""
        return self.directory / f"step_{step:08d}{self.suffix}"


class RunDir(CheckpointNames):
    """Paths and start/end chores of one run's output folder; the checkpoint names (`last`, `best`,
    `path(step)`) are those of its `checkpoints/` folder.

    `suffix` is the checkpoint suffix (".ckpt" files; "" for directory checkpoints).
    """

    def __init__(self, root: str | os.PathLike, suffix: str = ".ckpt") -> None:
        self.root = Path(root)
        self.checkpoints = self.root / CHECKPOINT_DIR
        super().__init__(self.checkpoints, suffix)

    def resolve_resume(self, resume: str | os.PathLike | None) -> str | None:
        """`resolve_resume(resume, self.last)`: null | auto | PATH -> the checkpoint, or None."""
        return resolve_resume(resume, self.last)

    def previous_run(self, outputs: Iterable[str] = ()) -> list[str]:
        """What of an earlier run the folder holds: `config.yaml`, `summary.json`, checkpoints and the
        stage's own `outputs` (names relative to the root, e.g. "laq_final.pt"); [] for a new folder."""
        found = [name for name in ("config.yaml", "summary.json", *outputs) if (self.root / name).exists()]
        if self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            found.append(f"{CHECKPOINT_DIR}/")
        return found

    def start(self, resume: str | os.PathLike | None, overwrite: bool = False, outputs: Iterable[str] = (),
              rank_zero: bool = True) -> str | None:
        """The start of every training run, before anything is written: the checkpoint to continue from
        (`resolve_resume`), or None for a fresh run.

        A folder that holds a run (`previous_run`) is refused with a `ConfigError` unless the user says
        what to do with it: `resume=auto` (or a checkpoint path) continues it, `overwrite=true` starts over
        and first deletes the earlier run's files (rank 0; `outputs` are the stage's own files and folders,
        e.g. the final model, logs, pictures; nothing else in the folder is touched). So a finished run is
        never silently replaced, nor are old checkpoints left mixed with new ones.

        Only rank 0 looks at the folder (`rank_zero`): the other ranks may start after rank 0 has written
        this run's `config.yaml` (Lightning's launcher starts them inside `fit`), so they follow rank 0's
        decision, which ends the job when it refuses (a job step should end when one task fails:
        torchrun does; `srun --kill-on-bad-exit=1`)."""
        if overwrite and resume is not None:
            raise ConfigError(f"overwrite=true with resume={resume}: overwrite starts the run over; drop one")
        found = self.previous_run(outputs) if rank_zero else []
        if found and resume is None and not overwrite:
            raise ConfigError(
                f"output_dir={self.root} already holds a run ({', '.join(found)}); continue it with "
                "resume=auto, or start over with overwrite=true (deletes that run's checkpoints and outputs), "
                "or choose another output_dir")
        if found and overwrite and rank_zero:
            for name in ("config.yaml", "summary.json", CHECKPOINT_DIR, *outputs):
                if (self.root / name).exists() or (self.root / name).is_symlink():
                    _remove(self.root / name)
        return self.resolve_resume(resume)

    def clean(self, resume_step: int | None) -> list[Path]:
        """Start-of-run clean-up (rank 0, before anything saves): the temporary files a kill left behind
        and, when resuming from step `resume_step`, the orphan checkpoints newer than it. Returns the
        removed orphans (the temporaries are never a state anyone wants)."""
        remove_stale_temporaries(self.checkpoints)
        if resume_step is None or not self.checkpoints.is_dir():
            return []
        return drop_checkpoints_after(self.checkpoints, resume_step)

    def rotation(self, keep: int, mode: str = "min") -> CheckpointRotation:
        """A `CheckpointRotation` of this run's checkpoint folder (for a plain loop)."""
        return CheckpointRotation(self.checkpoints, keep, self.suffix, mode)

    def write_config(self, config_yaml: str) -> Path:
        """`config.yaml`, atomically (also creates the folder)."""
        path = self.root / "config.yaml"
        write_text_atomic(path, config_yaml)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """`summary.json`, atomically: a reader sees the previous summary or the new one, never half."""
        path = self.root / "summary.json"
        write_json_atomic(path, summary)
        return path


def _point(link: Path, target: Path) -> None:
    """Make `link` a relative symbolic link to `target` (same folder), atomically: a new link under a
    temporary name renamed onto `link`, so a reader never finds `link` missing."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")  # `.*.tmp`: removed by the start clean-up
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


class CheckpointRotation(CheckpointNames):
    """Checkpoint rotation for a plain training loop (Fabric): periodic `step_N`, `last` and `best`.

    A save at step N, with a validation score when there is one:

        rotation.update_best(step, score)         # every rank: bookkeeping, goes into the saved state
        state["rotation"] = rotation.state_dict()
        fabric.save(rotation.path(step), state)   # the stage's writer (all ranks for a sharded save)
        fabric.barrier()
        if fabric.global_rank == 0:
            rotation.commit(step)                 # `last` (and `best`) -> step_N, old ones deleted

    Keeps the `keep` newest `step_N` entries, plus whatever `last` and `best` point to. Save at a step
    off the periodic schedule when `update_best` returns True, so that `best` has a checkpoint. On
    resume, `load_state_dict` restores the best score; the next `commit` re-points `best`.
    """

    def __init__(self, directory: str | os.PathLike, keep: int, suffix: str = ".ckpt",
                 mode: str = "min") -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: must be >= 1 (the newest checkpoint is the one to resume)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: must be 'min' or 'max'")
        super().__init__(directory, suffix)
        self.keep = keep
        self.mode = mode
        self.best_score: float | None = None
        self.best_step: int | None = None

    def update_best(self, step: int, score: float | None) -> bool:
        """Record a validation score of step `step`; True when it is the best so far (NaN never is)."""
        if score is None or math.isnan(score):
            return False
        better = self.best_score is None or (
            score < self.best_score if self.mode == "min" else score > self.best_score)
        if better:
            self.best_score, self.best_step = float(score), step
        return better

    def commit(self, step: int) -> list[Path]:
        """After `path(step)` was written completely (rank 0): point `last` (and `best`, when its step
        has a checkpoint) at it, then delete the periodic checkpoints beyond the `keep` newest that no
        link points to. Returns the deleted paths."""
        if not self.path(step).exists():
            raise FileNotFoundError(f"{self.path(step)}: commit only after the checkpoint was written")
        _point(self.last, self.path(step))
        if self.best_step is not None and self.path(self.best_step).exists():
            _point(self.best, self.path(self.best_step))
        return self.prune()

    def prune(self) -> list[Path]:
        """Delete `step_N` entries beyond the `keep` newest, sparing the targets of `last` and `best`."""
        entries = step_checkpoints(self.directory)
        spared = {p.resolve() for p in (self.last, self.best) if p.is_symlink() and p.exists()}
        deleted = []
        for _, path in entries[:-self.keep]:
            if path.resolve() not in spared:
                _remove(path)
                deleted.append(path)
        return deleted

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "keep": self.keep,
                "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best score/step of a resumed run (`keep` and `mode` stay as configured now)."""
        self.best_score = state.get("best_score")
        self.best_step = state.get("best_step")
