"""Shared fixtures of the simulator tests: one small-image world per test module (fast to render)."""

from __future__ import annotations

import pytest

pytest.importorskip("pybullet")

from lapa.sim.world import SimConfig, TabletopWorld  # noqa: E402


@pytest.fixture(scope="module")
def world():
    w = TabletopWorld(SimConfig(image_size=32))
    yield w
    w.close()
