"""Stopping a real `lapa` training process as Slurm does at a time limit: start it, wait until it has
written what the test needs (a checkpoint), send SIGTERM, collect its exit status and output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LAPA_BIN = str(Path(sys.executable).with_name("lapa"))


def sigterm_when(args: list[str], ready: Callable[[], bool], timeout: float = 240) -> tuple[int, str]:
    """Run `lapa *args` (one torch thread), SIGTERM it once `ready()` holds; (exit status, its output)."""
    proc = subprocess.Popen([LAPA_BIN, *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"lapa {args[0]}: not ready within {timeout} s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    printed = proc.communicate(timeout=120)[0]
    return proc.returncode, printed
