"""Corrupt-sample accounting: bad input is skipped with a logged reason and counted, never fatal
(DESIGN.md section 12).

Counts are per process (each DataLoader worker counts what it skipped); `skipped_samples()` in the
trainer process sees its own, which is everything when the loader runs without workers.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

log = logging.getLogger(__name__)

_SKIPPED: Counter = Counter()


def skipped_samples() -> dict[str, int]:
    """Samples skipped in this process so far, by reason ("bad jpeg", "missing part", "bad action", ...)."""
    return dict(_SKIPPED)


def skip(reason: str, detail: str) -> None:
    """Count one skipped sample under `reason` and warn. Returns None, so a reader can `return skip(...)`."""
    _SKIPPED[reason] += 1
    n = sum(_SKIPPED.values())
    if n <= 20 or n % 1000 == 0:  # every early one, then a heartbeat: a bad shard cannot flood logs
        log.warning("skipped a sample (%s): %s [%d skipped so far in pid %d]", reason, detail, n,
                    os.getpid())


def where(sample: dict) -> str:
    """`shard:key` of a raw tar sample, for skip messages."""
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def has_parts(sample: dict, parts: tuple[str, ...]) -> bool:
    """Whether `sample` has every one of `parts`; a sample that lacks one is counted as "missing part"."""
    missing = [part for part in parts if part not in sample]
    if missing:
        skip("missing part", f"{where(sample)} has no {', '.join(missing)}")
    return not missing
