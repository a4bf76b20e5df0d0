"""Each latent-action metric on constructed cases whose right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lapa.eval import metrics as M


def test_psnr_of_known_mse() -> None:
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.full_like(target, 0.1)  # MSE 0.01 -> 20 dB
    assert M.per_image_mse(pred, target).tolist() == pytest.approx([0.01, 0.01])
    assert M.psnr(pred, target) == pytest.approx(20.0)
    assert M.psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert M.psnr_from_mse(0.0) == math.inf
    assert M.psnr_from_mse(np.array([1.0, 0.01])).tolist() == pytest.approx([0.0, 20.0])


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
    counts = M.code_counts(uniform, k)
    assert counts.shape == (2, k)
    assert counts[0].tolist() == [8] * k and counts[1].tolist() == [64] + [0] * 7
    assert M.perplexity(counts).tolist() == pytest.approx([8.0, 1.0])
    assert M.utilisation(counts).tolist() == pytest.approx([1.0, 1 / 8])
    # Two codes used equally -> perplexity 2.
    assert M.perplexity(np.array([5, 5, 0, 0])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="outside 0..7"):
        M.code_counts(np.array([[8]]), k)


def test_combo_ids_and_histogram() -> None:
    idx = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [7, 7, 7, 7]])
    assert M.combo_ids(idx, 8).tolist() == [1, 512, 1, 4095]
    hist = M.combo_histogram(idx)
    assert len(hist) == 3
    assert hist[(0, 0, 0, 1)] == 2 and hist[(7, 7, 7, 7)] == 1


def test_nmi_perfect_permuted_and_independent() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, size=5000)
    relabelled = (a * 7 + 3) % 6  # a bijection of the labels: the same partition
    assert M.normalized_mutual_information(a, relabelled) == pytest.approx(1.0)
    assert M.mutual_information(a, a) == pytest.approx(M.entropy(a))
    independent = rng.integers(0, 6, size=5000)
    assert M.normalized_mutual_information(a, independent) < 0.01
    # Entropy of a uniform 4-way label is log 4.
    assert M.entropy(np.arange(400) % 4) == pytest.approx(math.log(4))
    assert M.normalized_mutual_information(np.zeros(10), np.zeros(10)) == 1.0
    assert M.normalized_mutual_information(np.zeros(10), np.arange(10) % 2) == 0.0


def test_nmi_known_partial_value() -> None:
    # b keeps one of the two bits of a (a uniform over 4): I = log 2, H(a) = log 4, H(b) = log 2.
    a = np.arange(4000) % 4
    b = a // 2
    expected = math.log(2) / ((math.log(4) + math.log(2)) / 2)
    assert M.normalized_mutual_information(a, b) == pytest.approx(expected)


def test_discretize_actions_terciles_and_combination() -> None:
    x = np.linspace(-1, 1, 9)
    actions = np.stack([x, np.zeros(9), -x], axis=1)
    cls = M.discretize_actions(actions, dims=(0,), bins=3)
    assert cls.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    both = M.discretize_actions(actions, dims=(0, 2), bins=3)
    assert both.tolist() == [c * 3 + (2 - c) for c in cls]  # dim 2 is the mirror of dim 0
    # A constant dimension lands in one bin.
    assert len(set(M.discretize_actions(actions, dims=(1,), bins=3).tolist())) == 1
    with pytest.raises(ValueError, match="dims"):
        M.discretize_actions(actions, dims=(5,))


def test_one_hot_latents() -> None:
    feats = M.one_hot_latents(np.array([[0, 2], [1, 1]]), 3)
    assert feats.tolist() == [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0]]


def test_logistic_probe_perfect_and_chance() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 8, size=(600, 2))
    feats = M.one_hot_latents(idx, 8)
    labels = idx[:, 0] % 4  # a deterministic function of the code at position 0
    assert M.logistic_probe_accuracy(feats, labels) == pytest.approx(1.0)
    shuffled_acc = M.logistic_probe_accuracy(feats, M.shuffled(labels))
    assert abs(shuffled_acc - 0.25) < 0.1  # chance for 4 balanced classes


def test_ridge_probe_linear_and_noise() -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 8, size=(800, 4))
    feats = M.one_hot_latents(idx, 8)
    table = rng.normal(size=(8, 2))
    targets = np.concatenate([table[idx[:, 1]], np.zeros((800, 1))], axis=1)  # 3rd dim constant
    r2, per_dim = M.ridge_probe_r2(feats, targets, l2=1e-6)
    assert r2 == pytest.approx(1.0, abs=1e-4)
    assert per_dim[2] is None
    noise_r2, _ = M.ridge_probe_r2(feats, rng.normal(size=(800, 2)))
    assert noise_r2 < 0.05


def test_split_indices_is_a_partition() -> None:
    train, test = M.split_indices(10, 0.7, seed=3)
    assert len(train) == 7 and len(test) == 3
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))


def test_derangement_has_no_fixed_point() -> None:
    for n in (2, 3, 10, 257):
        for seed in range(5):
            perm = M.derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n))
            assert not np.any(perm == np.arange(n))
    with pytest.raises(ValueError):
        M.derangement(1)


def test_delta_psnr() -> None:
    assert M.delta_psnr(0.001, 0.01) == pytest.approx(10.0)
    assert M.delta_psnr(0.01, 0.01) == pytest.approx(0.0)
