"""Evaluation measures: information between latent and true actions, linear probes, controllability,
and the confidence interval of a success rate.

The LAQ's own measures (codebook statistics, reconstruction PSNR) live in `lapa.laq.metrics`, beside the
model that training and labelling also measure; everything here is pure numpy/torch on in-memory arrays
so each measure can be tested on constructed cases whose right answer is known. Conventions:

- Normalised mutual information uses the arithmetic mean of the two entropies (scikit-learn's default):
  `NMI = I(a; b) / ((H(a) + H(b)) / 2)`, in nats, 1 for identical partitions, ~0 for independent ones
  (a positive bias remains at finite N when a label has many classes: hence the shuffled baselines).
- Success rates (closed-loop policy evaluation) come with Wilson score intervals, which stay inside
  [0, 1] and are honest at 0 or N successes out of a few dozen episodes, where the normal approximation
  collapses to a zero-width interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lapa.laq.metrics import Array, psnr_from_mse
from lapa.laq.metrics import to_numpy as _np


# --------------------------------------------------------------------------------------------------
# Information between discrete labels
# --------------------------------------------------------------------------------------------------
def _relabel(x: Array) -> np.ndarray:
    """Arbitrary discrete labels `[N]` -> dense ids 0..C-1."""
    return np.unique(_np(x).reshape(len(_np(x)), -1), axis=0, return_inverse=True)[1].reshape(-1)


def entropy(labels: Array) -> float:
    """Shannon entropy (nats) of the empirical distribution of `labels` `[N]`."""
    counts = np.bincount(_relabel(labels)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: Array, b: Array) -> float:
    """Empirical mutual information (nats) between two label arrays `[N]`."""
    a_ids, b_ids = _relabel(a), _relabel(b)
    if len(a_ids) != len(b_ids):
        raise ValueError(f"label arrays differ in length: {len(a_ids)} vs {len(b_ids)}")
    n = len(a_ids)
    joint = np.zeros((a_ids.max() + 1, b_ids.max() + 1), dtype=np.float64)
    np.add.at(joint, (a_ids, b_ids), 1.0)
    pab = joint / n
    pa, pb = pab.sum(axis=1, keepdims=True), pab.sum(axis=0, keepdims=True)
    nz = pab > 0
    return float(max(0.0, (pab[nz] * np.log(pab[nz] / (pa @ pb)[nz])).sum()))


def normalized_mutual_information(a: Array, b: Array) -> float:
    """NMI with the arithmetic-mean normalisation (see the module docstring), in [0, 1].

    Two constant labellings are identical partitions: 1.0 (scikit-learn's convention).
    """
    ha, hb = entropy(a), entropy(b)
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return float(min(1.0, mutual_information(a, b) / ((ha + hb) / 2.0)))


# --------------------------------------------------------------------------------------------------
# Discretising continuous true actions
# --------------------------------------------------------------------------------------------------
def discretize_actions(actions: Array, dims: tuple[int, ...] | list[int] = (0, 1, 2),
                       bins: int = 3) -> np.ndarray:
    """Continuous actions `[N, D]` -> one class id per row in 0..bins**len(dims)-1.

    Each selected dimension is cut at its empirical quantiles (terciles for bins=3: "negative / small /
    positive" with equally populated bins, whatever the action's scale), and the per-dimension bins are
    combined into one class (base-`bins` number). A constant dimension falls in a single bin. The default
    dims (0, 1, 2) are the end-effector translation dx, dy, dz of the simulator's action layout.
    """
    act = _np(actions).astype(np.float64)
    if act.ndim != 2:
        raise ValueError(f"actions must be [N, D], got shape {act.shape}")
    if bins < 1 or not dims or any(d < 0 or d >= act.shape[1] for d in dims):
        raise ValueError(f"need bins >= 1 and dims within 0..{act.shape[1] - 1}; got bins={bins}, dims={dims}")
    cls = np.zeros(len(act), dtype=np.int64)
    for d in dims:
        edges = np.quantile(act[:, d], np.arange(1, bins) / bins) if len(act) else np.zeros(bins - 1)
        cls = cls * bins + np.searchsorted(edges, act[:, d], side="right").clip(0, bins - 1)
    return cls


# --------------------------------------------------------------------------------------------------
# Linear probes from the latent action to the true action
# --------------------------------------------------------------------------------------------------
def one_hot_latents(indices: Array, codebook_size: int) -> np.ndarray:
    """Probe features: indices `[N, L]` -> concatenated one-hot codes `[N, L*K]` float32."""
    idx = _np(indices).astype(np.int64)
    n, length = idx.shape
    out = np.zeros((n, length * codebook_size), dtype=np.float32)
    cols = idx + codebook_size * np.arange(length)[None, :]
    out[np.arange(n)[:, None], cols] = 1.0
    return out


def split_indices(n: int, train_fraction: float = 0.7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train / held-out split of n items (each side gets at least one item when n >= 2)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * train_fraction))
    n_train = min(max(n_train, 1), n - 1) if n >= 2 else n
    return perm[:n_train], perm[n_train:]


def logistic_probe_accuracy(features: np.ndarray, labels: np.ndarray, train_fraction: float = 0.7,
                            l2: float = 1e-3, steps: int = 100, seed: int = 0) -> float:
    """Held-out accuracy of multinomial logistic regression features `[N, F]` -> labels `[N]`.

    Trained with full-batch L-BFGS (`steps` iterations) on an L2-regularised cross-entropy.
    """
    y_all = _relabel(labels)
    train, test = split_indices(len(y_all), train_fraction, seed)
    if len(test) == 0:
        raise ValueError("need at least 2 samples for a held-out probe")
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(y_all)
    num_classes = int(y_all.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(x.shape[1], num_classes, generator=gen)).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")
    x_tr, y_tr = x[train], y[train]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_tr @ weight + bias, y_tr) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (x[test] @ weight + bias).argmax(dim=1)
    return float((pred == y[test]).float().mean())


def ridge_probe_r2(features: np.ndarray, targets: np.ndarray, train_fraction: float = 0.7,
                   l2: float = 1e-2, seed: int = 0) -> tuple[float, list[float | None]]:
    """Held-out R^2 of closed-form ridge regression features `[N, F]` -> continuous targets `[N, D]`.

    Returns (mean R^2 over the dimensions that vary on the held-out split, per-dimension R^2 with None
    for constant dimensions). R^2 = 1 - SS_res / SS_tot per dimension; it is negative when the probe is
    worse than predicting the training mean.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64).reshape(len(x), -1)
    train, test = split_indices(len(x), train_fraction, seed)
    x_mean, y_mean = x[train].mean(axis=0), y[train].mean(axis=0)
    xc, yc = x[train] - x_mean, y[train] - y_mean  # centring = an unpenalised intercept
    coef = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ yc)
    pred = (x[test] - x_mean) @ coef + y_mean
    ss_res = ((y[test] - pred) ** 2).sum(axis=0)
    ss_tot = ((y[test] - y[test].mean(axis=0)) ** 2).sum(axis=0)
    per_dim = [float(1.0 - r / t) if t > 1e-12 else None for r, t in zip(ss_res, ss_tot)]
    valid = [v for v in per_dim if v is not None]
    return (float(np.mean(valid)) if valid else float("nan")), per_dim


def shuffled(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """`labels` (rows) in a seeded random order: the baseline that keeps the label distribution but
    destroys any relation to the latent action."""
    labels = np.asarray(labels)
    return labels[np.random.default_rng(seed + 1).permutation(len(labels))]


# --------------------------------------------------------------------------------------------------
# Controllability
# --------------------------------------------------------------------------------------------------
def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): `perm[i] != i`, "a random *other* pair"."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    fixed = np.flatnonzero(perm == np.arange(n))
    # Swap each fixed point with a random other position: neither ends fixed (perm[j] != i since perm[i]==i).
    for i in fixed:
        if perm[i] != i:
            continue
        j = int(rng.integers(n - 1))
        j += j >= i
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def delta_psnr(mse_inferred: float, mse_random: float) -> float:
    """Controllability (Genie's delta-t PSNR): PSNR with the inferred latent minus PSNR with the latent
    of a random other pair; > 0 when the decoder's prediction depends on the latent action."""
    return float(psnr_from_mse(mse_inferred) - psnr_from_mse(mse_random))


# --------------------------------------------------------------------------------------------------
# Success rates
# --------------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
