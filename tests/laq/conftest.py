"""Shared fixtures of the LAQ tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Training tests run with one torch thread: faster on 2 shared cores, and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
