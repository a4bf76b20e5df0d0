"""The LAQ's own measures (lapa.laq.metrics) on constructed cases whose right answer is known, for numpy
arrays and tensors alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lapa.laq import metrics as M


def test_psnr_of_known_mse() -> None:
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    assert M.per_image_mse(pred, target).tolist() == pytest.approx([0.01, 0.01])
    assert M.psnr(pred, target) == pytest.approx(20.0)
    assert M.psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert M.psnr_from_mse(0.0) == math.inf
    assert M.psnr_from_mse(np.array([1.0, 0.01])).tolist() == pytest.approx([0.0, 20.0])


def test_psnr_from_mse_keeps_the_input_kind_and_floors_on_request() -> None:
    assert isinstance(M.psnr_from_mse(0.01), float)
    assert isinstance(M.psnr_from_mse(np.array([0.01])), np.ndarray)
    t = M.psnr_from_mse(torch.tensor([0.01, 0.0]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t[0].item() == pytest.approx(20.0) and math.isinf(t[1].item())
    assert float(M.psnr_from_mse(torch.tensor(0.0), min_mse=1e-10)) == pytest.approx(100.0)
    assert M.psnr_from_mse(0.25, max_val=2.0) == pytest.approx(10 * math.log10(16))


def test_psnr_clamps_prediction_and_uses_mean_mse() -> None:
    target = torch.ones(2, 3, 2, 2)
    pred = target.clone()
    pred[0] = 2.0  # clamped to 1: no error
    pred[1] = 0.9  # MSE 0.01 for image 1, 0 for image 0 -> mean 0.005
    assert M.per_image_mse(pred, target).tolist() == pytest.approx([0.0, 0.01])
    assert M.psnr(pred, target) == pytest.approx(10 * math.log10(1 / 0.005))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.per_image_mse(pred, target[:1])


def test_codebook_counts_perplexity_utilisation() -> None:
    k = 8
    uniform = np.stack([np.arange(64) % k, np.zeros(64, dtype=int)], axis=1)  # pos 0 uniform, pos 1 one code
    counts = M.code_counts(uniform, k, per_position=True)
    assert isinstance(counts, np.ndarray) and counts.shape == (2, k) and counts.dtype == np.int64
    assert counts[0].tolist() == [8] * k and counts[1].tolist() == [64] + [0] * 7
    assert M.perplexity(counts).tolist() == pytest.approx([8.0, 1.0])
    assert M.utilisation(counts).tolist() == pytest.approx([1.0, 1 / 8])
    # Two codes used equally -> perplexity 2; no observations at all -> 0.
    assert M.perplexity(np.array([5, 5, 0, 0])) == pytest.approx(2.0)
    assert M.perplexity(np.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="outside 0..7"):
        M.code_counts(np.array([[8]]), k, per_position=True)
    with pytest.raises(ValueError, match="indices must be"):
        M.code_counts(np.arange(3), k, per_position=True)


def test_tensors_and_arrays_give_the_same_numbers() -> None:
    idx = torch.randint(0, 8, (50, 4), generator=torch.Generator().manual_seed(0))
    counts_t = M.code_counts(idx, 8, per_position=True)
    counts_n = M.code_counts(idx.numpy(), 8, per_position=True)
    assert isinstance(counts_t, torch.Tensor) and counts_t.tolist() == counts_n.tolist()
    assert M.code_counts(idx, 8).tolist() == counts_n.sum(axis=0).tolist()  # all positions pooled
    assert M.perplexity(counts_t).tolist() == pytest.approx(M.perplexity(counts_n).tolist(), rel=1e-6)
    assert M.utilisation(counts_t).tolist() == pytest.approx(M.utilisation(counts_n).tolist())


def test_perplexity_of_histograms() -> None:
    assert float(M.perplexity_of(torch.tensor([0, 1, 2, 3]), 8)) == pytest.approx(4.0, rel=1e-5)
    assert float(M.perplexity_of(torch.tensor([5, 5, 5]), 8)) == pytest.approx(1.0, rel=1e-6)
    assert float(M.perplexity_of(torch.tensor([[0, 0], [1, 1]]), 8)) == pytest.approx(2.0, rel=1e-5)
    assert M.perplexity_of(torch.tensor([0, 1]), 8).dtype == torch.float32


def test_combo_ids_and_histogram() -> None:
    idx = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [7, 7, 7, 7]])
    assert M.combo_ids(idx, 8).tolist() == [1, 512, 1, 4095]
    assert M.combo_ids(torch.as_tensor(idx), 8).tolist() == [1, 512, 1, 4095]
    hist = M.combo_histogram(idx)
    assert len(hist) == 3
    assert hist[(0, 0, 0, 1)] == 2 and hist[(7, 7, 7, 7)] == 1

