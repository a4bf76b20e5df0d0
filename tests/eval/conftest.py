"""Fixtures of the evaluation tests (the tiny LAQ checkpoint and `one_thread` are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every evaluation test runs on one torch thread."""
    yield
