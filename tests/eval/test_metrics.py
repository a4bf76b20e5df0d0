"""Each evaluation measure on constructed cases whose right answer is known (the LAQ's own measures:
tests/laq/test_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lapa.eval import metrics as M


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


def test_wilson_interval_numbers() -> None:
    assert M.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert M.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert M.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
