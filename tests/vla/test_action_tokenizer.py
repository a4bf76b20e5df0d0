"""The Stage 3 action tokenizer (spec 2.3.2, task 3.1): statistics, bins, round trips, files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lapa.vla.action_tokenizer import STATS_NAME, ActionTokenizer


def sim_like_actions(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """Actions shaped like the built-in world's demonstrations: translations often at the +-2 cm clip
    with heavy-tailed small moves in between, roll/pitch never used (0), yaw mostly 0 with some turns,
    a binary gripper (1 open, 0 closed)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 7), dtype=np.float32)
    pos = rng.standard_t(3, size=(n, 3)) * 0.006
    out[:, :3] = np.clip(pos, -0.02, 0.02)
    turning = rng.random(n) < 0.2
    out[turning, 5] = rng.normal(0, 0.05, size=turning.sum())
    out[:, 6] = (rng.random(n) < 0.6).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def actions() -> np.ndarray:
    return sim_like_actions()


@pytest.fixture(scope="module")
def tok(actions) -> ActionTokenizer:
    return ActionTokenizer.fit(actions)


def test_statistics_are_those_of_the_data(tok, actions):
    x = actions.astype(np.float64)
    for i, dim in enumerate(tok.dims):
        assert dim.count == len(actions)
        assert dim.min == pytest.approx(x[:, i].min()) and dim.max == pytest.approx(x[:, i].max())
        assert dim.mean == pytest.approx(x[:, i].mean()) and dim.std == pytest.approx(x[:, i].std())
        assert dim.q01 == pytest.approx(np.percentile(x[:, i], 1))
        assert dim.q99 == pytest.approx(np.percentile(x[:, i], 99))
    assert [d.code for d in tok.dims] == ["uniform"] * 3 + ["discrete"] * 2 + ["uniform", "discrete"]
    assert tok.dims[3].values == [0.0] and tok.dims[6].values == [0.0, 1.0]


def test_round_trip_error_below_one_percent_of_each_range(tok, actions):
    """Spec 3.1: quantise -> dequantise within 1% of the dimension's range (here: at most half a bin)."""
    bins = tok.encode(actions)
    assert bins.dtype == np.int64 and bins.shape == actions.shape
    assert bins.min() >= 0 and bins.max() <= 255
    decoded = tok.decode(bins)
    assert decoded.dtype == np.float32 and decoded.shape == actions.shape
    err = np.abs(decoded.astype(np.float64) - actions)
    for i, dim in enumerate(tok.dims):
        inside = (actions[:, i] >= dim.q01) & (actions[:, i] <= dim.q99)
        assert err[inside, i].max() <= dim.scale / 512 + 1e-6, dim.name  # half a bin of 256
        assert err[inside, i].max() < 0.01 * dim.scale, dim.name
        full_range = max(dim.max - dim.min, 1e-12)
        assert err[:, i].mean() < 0.01 * full_range, dim.name  # outliers included


def test_bins_are_uniform_between_the_percentiles(tok):
    dim = tok.dims[0]
    width = (dim.q99 - dim.q01) / 256
    x = np.zeros((256, 7), dtype=np.float64)
    x[:, 0] = dim.q01 + width * (np.arange(256) + 0.5)  # every bin's centre
    assert np.array_equal(tok.encode(x)[:, 0], np.arange(256))
    assert np.allclose(tok.decode(np.arange(256)[:, None].repeat(7, 1))[:, 0], x[:, 0], atol=1e-7)
    # the spec's formula int((a - min) / (max - min) * 256), clipped
    assert tok.encode(np.full((1, 7), dim.q01 + 10.2 * width))[0, 0] == 10


def test_values_outside_the_percentiles_are_clipped(tok):
    lo, hi = np.full((1, 7), -1e3), np.full((1, 7), 1e3)
    assert (tok.encode(lo)[0, [0, 1, 2, 5]] == 0).all()
    assert (tok.encode(hi)[0, [0, 1, 2, 5]] == 255).all()
    x = tok.dims[0]
    assert tok.decode(tok.encode(hi))[0, 0] == pytest.approx(x.q99 - (x.q99 - x.q01) / 512, rel=1e-5)


def test_constant_dimension_decodes_to_its_value_exactly():
    data = np.random.default_rng(1).normal(size=(500, 7))
    data[:, 3] = 0.25  # a rotation never used
    data[:, 4] = 0.0
    data[:5, 4] = [3.0, -2.0, 1.0, 7.0, 5.0]  # rare spikes: q01 == q99 == 0, more than 2 values
    tok = ActionTokenizer.fit(data)
    assert tok.dims[3].code == "discrete" and tok.dims[4].code == "discrete"
    assert tok.scale[3] == 1.0 and tok.scale[4] == 1.0  # no division by a zero range
    decoded = tok.decode(tok.encode(data))
    assert (decoded[:, 3] == np.float32(0.25)).all() and (decoded[:, 4] == 0.0).all()
    # any bin the model may predict still decodes to the value
    every_bin = np.tile(np.arange(256)[:, None], (1, 7))
    assert (tok.decode(every_bin)[:, 3] == np.float32(0.25)).all()
    assert np.isfinite(tok.normalize(data)).all()


def test_float_noise_dimension_is_constant():
    """The simulator's roll and pitch are 0 up to float noise (1e-27 .. 1e-11, a few distinct values): a
    range of 1e-11 must not become the unit of the normalised error."""
    data = np.random.default_rng(2).normal(size=(1000, 7))
    data[:, 3] = 0.0
    data[::12, 3] = 9.2e-12
    data[::17, 3] = -4.8e-27
    data[::5, 3] = 3e-13
    tok = ActionTokenizer.fit(data)
    assert tok.dims[3].code == "discrete" and tok.dims[3].values == [0.0] and tok.scale[3] == 1.0
    assert (tok.decode(tok.encode(data))[:, 3] == 0).all()
    assert tok.normalized_mse(np.zeros_like(data), data)[3] < 1e-20


def test_binary_gripper_decodes_to_its_two_values():
    data = np.zeros((1000, 7))
    data[:, 0] = np.linspace(-1, 1, 1000)
    data[:, 6] = np.where(np.arange(1000) % 3 == 0, 1.0, -1.0)
    tok = ActionTokenizer.fit(data)
    bins = tok.encode(data)[:, 6]
    assert set(bins.tolist()) == {64, 192}  # the middle bins of the two halves
    decoded = tok.decode(tok.encode(data))[:, 6]
    assert np.array_equal(decoded, data[:, 6].astype(np.float32))
    every_bin = np.tile(np.arange(256)[:, None], (1, 7))
    assert set(tok.decode(every_bin)[:, 6].tolist()) == {-1.0, 1.0}
    assert tok.scale[6] == 2.0 and tok.offset[6] == -1.0  # its range, whatever its percentiles
    # an unseen command goes to the nearer value
    probe = np.zeros((3, 7))
    probe[:, 6] = [-0.2, 0.3, 5.0]
    assert tok.decode(tok.encode(probe))[:, 6].tolist() == [-1.0, 1.0, 1.0]


def test_equal_frequency_bins():
    actions = np.random.default_rng(3).standard_t(3, size=(20_000, 7))  # heavy tails, no repeated values
    tok = ActionTokenizer.fit(actions, binning="quantile")
    assert tok.binning == "quantile" and tok.dims[0].code == "quantile"
    bins = tok.encode(actions)[:, 0]
    inside = (actions[:, 0] > tok.dims[0].q01) & (actions[:, 0] < tok.dims[0].q99)
    counts = np.bincount(bins[inside], minlength=256)
    # heavy-tailed data: uniform bins leave the tails almost empty; equal-frequency bins do not
    uniform_counts = np.bincount(ActionTokenizer.fit(actions).encode(actions)[inside, 0], minlength=256)
    expected = inside.sum() / 256
    assert counts.min() > 0.5 * expected and counts.max() < 1.6 * expected
    assert uniform_counts.max() > 3 * expected
    err = np.abs(tok.decode(tok.encode(actions))[:, 0] - actions[:, 0])
    assert err[inside].mean() < 0.01 * tok.dims[0].scale


def test_json_round_trip(tmp_path, actions):
    for binning in ("uniform", "quantile"):
        tok = ActionTokenizer.fit(actions, binning=binning)
        path = tok.save(tmp_path / binning)
        assert path.name == STATS_NAME and not list(path.parent.glob("*.tmp"))
        data = json.loads(path.read_text())
        assert data["format"] == "lapa-action-stats" and data["num_bins"] == 256
        assert {"count", "min", "max", "mean", "std", "q01", "q99"} <= set(data["dims"][0])
        again = ActionTokenizer.load(path.parent)
        assert again.dims == tok.dims
        probe = sim_like_actions(500, seed=7)
        assert np.array_equal(again.encode(probe), tok.encode(probe))
        assert np.array_equal(again.decode(tok.encode(probe)), tok.decode(tok.encode(probe)))


def test_torch_in_torch_out(tok, actions):
    x = torch.from_numpy(actions[:300])
    bins = tok.encode(x)
    assert isinstance(bins, torch.Tensor) and bins.dtype == torch.int64
    assert np.array_equal(bins.numpy(), tok.encode(actions[:300]))
    decoded = tok.decode(bins)
    assert decoded.dtype == torch.float32
    assert np.array_equal(decoded.numpy(), tok.decode(bins.numpy()))
    batch = x.reshape(10, 30, 7)  # any leading shape
    assert tok.decode(tok.encode(batch)).shape == (10, 30, 7)


def test_normalised_errors(tok, actions):
    pred = actions + tok.scale * 0.1  # off by a tenth of each range
    mse = tok.normalized_mse(pred, actions)
    assert mse.shape == (7,) and np.allclose(mse, 0.01, rtol=1e-3)
    mse_t = tok.normalized_mse(torch.from_numpy(pred), torch.from_numpy(actions))
    assert torch.allclose(mse_t, torch.full((7,), 0.01), rtol=1e-3)
    assert np.allclose(tok.unnormalize(tok.normalize(actions)), actions, atol=1e-6)
    assert np.allclose(tok.normalize(tok.offset[None]), 0)
    assert np.allclose(tok.offset[[0, 6]], [tok.dims[0].q01, 0.0])


def test_bad_input_gives_a_clear_error(tok, tmp_path):
    with pytest.raises(ValueError, match=r"expected shape \[\.\.\., 7\], got \[4, 6\]"):
        tok.encode(np.zeros((4, 6)))
    nan = np.zeros((3, 7))
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\), first at index \(1, 2\)"):
        tok.encode(nan)
    with pytest.raises(ValueError, match="non-finite"):
        tok.encode(torch.from_numpy(nan))
    with pytest.raises(ValueError, match="non-finite"):
        ActionTokenizer.fit(nan)
    with pytest.raises(ValueError, match=r"values must be in 0\.\.255, got 0\.\.256"):
        tok.decode(np.full((2, 7), 256) * np.array([0, 1])[:, None])
    with pytest.raises(ValueError, match="expected integers"):
        tok.decode(np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"expected shape \[\.\.\., 7\]"):
        tok.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="binning='median'"):
        ActionTokenizer.fit(np.zeros((10, 7)), binning="median")
    (tmp_path / STATS_NAME).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not action statistics"):
        ActionTokenizer.load(tmp_path)
