"""Stopping a plain training loop (Stage 2's Fabric loop) cleanly on SIGTERM or SIGUSR1.

Slurm sends SIGTERM at a job's time limit or on preemption (then SIGKILL after its KillWait), and
SIGUSR1 ahead of the limit when the job script asks for it (`#SBATCH --signal=SIGUSR1@90`, as
`slurm/train.sbatch` does). The Lightning Trainer handles both itself (Stages 1 and 3); Fabric leaves it to
the loop. `StopSignal` records the signal, the loop asks `should_stop()` at each step boundary, saves a
checkpoint and exits with status 143 (128 + SIGTERM), so a job script never mistakes a stopped run for a
finished one; under Slurm with SIGUSR1 it also requeues the job (`scontrol requeue`), which continues with
`resume=auto`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EXIT_STOPPED = 128 + signal.SIGTERM  # 143: what a process killed by SIGTERM reports


class StopSignal:
    """Records SIGTERM / SIGUSR1 while installed (a context manager; main thread only, else a no-op)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)
        log.warning("received %s: stopping after this step with a checkpoint", self.received.name)

    def should_stop(self, all_reduce_max: Callable[[int], int] | None = None) -> bool:
        """Whether to stop now. With several ranks pass `all_reduce_max` (an int -> the maximum over ranks),
        so that every rank stops at the same step even when the signal reached them at different times."""
        flag = int(self.received is not None)
        return bool(all_reduce_max(flag) if all_reduce_max is not None else flag)

    def requeue(self) -> bool:
        """After SIGUSR1 inside a Slurm job: ask Slurm to requeue it (rank 0 only). True when requeued."""
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if self.received != signal.SIGUSR1 or not job:
            return False
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return result.returncode == 0
