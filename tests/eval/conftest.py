"""Shared fixtures of the evaluation tests: a tiny random LAQ checkpoint and tiny frame-pair shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eval_shards import IMAGE_SIZE


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: keep each test process on one core
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def laq_checkpoint(tmp_path_factory) -> Path:
    """A random tiny LAQ (32 px, 4x4 patches -> 8x8 grid, 4 tokens, 8 codes) saved in our format."""
    from lapa.laq import LAQ, LAQConfig, save_model

    torch.manual_seed(0)
    cfg = LAQConfig(image_size=IMAGE_SIZE, patch_size=4, dim=32, quant_dim=8, spatial_depth=1,
                    temporal_depth=1, decoder_depth=1, heads=2, dim_head=16, codebook_size=8, code_seq_len=4)
    path = tmp_path_factory.mktemp("laq") / "laq_tiny.pt"
    save_model(LAQ(cfg).eval(), path)
    return path
