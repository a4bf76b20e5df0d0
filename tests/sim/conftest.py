"""Shared fixtures of the simulator tests: one small-image world per test module (fast to render)."""

from __future__ import annotations

import pytest

pytest.importorskip("pybullet")

from lapa.sim.config import SimConfig  # noqa: E402
from lapa.sim.world import TabletopWorld  # noqa: E402


@pytest.fixture(scope="module")
def world():
    w = TabletopWorld(SimConfig(image_size=32))
    yield w
    w.close()
