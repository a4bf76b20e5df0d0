"""Suite-wide pytest hooks and fixtures shared by several test folders.

- Tests marked `gpu` need CUDA and are skipped without it (CI has no GPU).
- `one_thread`: one torch thread for the test (faster on a few shared cores, and reproducible).
- `laq_checkpoint`: a tiny random LAQ saved in our format (labelling and evaluation tests), sized for the
  frame-pair shards of `pair_shards.make_pair_shards`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pair_shards import IMAGE_SIZE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread while the test runs: the CPU is shared, and results do not depend on threading."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
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
