"""Stage 3 action tokenizer: continuous 7-DoF robot actions <-> one class (bin) per dimension (spec 2.3.2).

Contract
--------
In:  actions, float `[..., 7]` (numpy or torch; `x y z roll pitch yaw gripper`), every value finite.
Out: `encode(actions)` -> int64 bins `[..., 7]`, each in `0 .. num_bins - 1` (what the Stage 3 head's
     `[B, 7, 256]` logits are trained on with cross-entropy); `decode(bins)` -> float32 `[..., 7]`.
     A numpy input gives numpy, a torch input gives torch on the input's device.
Fitted from the training demonstrations only (`ActionTokenizer.fit`): per dimension the count, min,
max, mean, std and the 1st / 99th percentiles (`q01`, `q99`), saved beside the model as
`action_stats.json` (`save` / `load`, atomic).

Per dimension, one of three codes, chosen when fitting:
- "uniform" (default, the spec): `num_bins` equal bins between q01 and q99; decoded to bin centres.
  (The spec's sketch, `int((a - q01) / (q99 - q01) * 255)` decoded at `q01 + b / 255 * range`, puts the
  levels on the range's ends and errs by up to a whole step; bin centres halve that.)
- "quantile" (option `binning="quantile"`): equal-frequency bins, edges at the training quantiles
  between q01 and q99; decoded to the middle of the bin's edges.
- "discrete": a dimension with at most `discrete_max_values` (2) distinct training values, e.g. a binary
  gripper or a rotation the data never uses (one value); or a constant one: its q99 - q01 is at most
  `min_range` (1e-6: float noise, like a rotation that is 0 up to 1e-11), which keeps its median. Its k
  values split the bin range into k equal parts: value j is encoded as the middle bin of part j, and
  any bin of part j decodes to value j exactly. No division by the range.

What is lost:
- values below q01 / above q99 are clipped to the outermost bin (the 2% of outliers the spec discards);
- within the range, uniform decoding errs by at most half a bin: (q99 - q01) / 512 at 256 bins;
  quantile bins are narrow where the data is dense and wide in the tails;
- a discrete dimension keeps only its training values: anything else is encoded as the nearest one;
- the decoded float32 differs from the float64 centres by float32 rounding.

The range that normalises errors ("MSE normalised by the dimension's range", the Stage 3 validation
metric and the spec's `< 0.05` criterion) is `scale`: q99 - q01 of a binned dimension, the spread of a
discrete dimension's values, and 1 for a constant one (errors there stay in the action's units).
Imports only numpy, torch and `lapa.io`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.io import write_json_atomic

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
STATS_NAME = "action_stats.json"
FORMAT, VERSION = "lapa-action-stats", 1
BINNINGS = ("uniform", "quantile")
Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class DimensionStats:
    """Statistics and code of one action dimension (one entry of `action_stats.json`)."""

    name: str
    count: int
    min: float
    max: float
    mean: float
    std: float
    q01: float  # 1st percentile: low end of the bins
    q99: float  # 99th percentile: high end of the bins
    code: str  # "uniform" | "quantile" | "discrete"
    values: list[float] = field(default_factory=list)  # discrete: the distinct values, ascending
    edges: list[float] = field(default_factory=list)  # quantile: num_bins + 1 ascending edges

    @property
    def low(self) -> float:
        """Where the dimension's range starts: q01, or a discrete dimension's smallest value."""
        return self.values[0] if self.code == "discrete" else self.q01

    @property
    def scale(self) -> float:
        """The dimension's range for normalised errors: q99 - q01, a discrete dimension's largest minus
        smallest value, or 1 for a constant dimension."""
        width = self.values[-1] - self.values[0] if self.code == "discrete" else self.q99 - self.q01
        return width if width > 0 else 1.0


class ActionTokenizer:
    """Bins of 7-DoF actions; see the module docstring for the contract."""

    def __init__(self, dims: Sequence[DimensionStats], num_bins: int = 256, binning: str = "uniform") -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins={num_bins}: must be >= 2")
        if binning not in BINNINGS:
            raise ValueError(f"binning={binning!r}: must be one of {BINNINGS}")
        self.dims, self.num_bins, self.binning = list(dims), num_bins, binning
        tables = [_code_tables(d, num_bins) for d in self.dims]
        # encode: bin = lookup[searchsorted(bounds, x, right)]; decode: centers[dim, bin]
        self._bounds = [b for b, _, _ in tables]  # float64 [m_d - 1] per dimension, ascending
        self._lookup = [lk for _, lk, _ in tables]  # int64 [m_d] per dimension
        self._centers = np.stack([c for _, _, c in tables])  # float64 [D, num_bins]
        self._torch_cache: dict[torch.device, tuple] = {}

    # ---- fitting -----------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, actions: Array, num_bins: int = 256, binning: str = "uniform",
            names: Sequence[str] = ACTION_NAMES, discrete_max_values: int = 2, min_range: float = 1e-6
            ) -> ActionTokenizer:
        """Statistics and bins from training actions `[N, D]` (D = len(names), normally 7)."""
        data = _as_numpy(actions, len(names), "actions").reshape(-1, len(names)).astype(np.float64)
        if len(data) == 0:
            raise ValueError("cannot fit an action tokenizer on 0 actions")
        if binning not in BINNINGS:
            raise ValueError(f"binning={binning!r}: must be one of {BINNINGS}")
        return cls([_fit_dimension(name, data[:, i], num_bins, binning, discrete_max_values, min_range)
                    for i, name in enumerate(names)], num_bins, binning)

    # ---- the codes ---------------------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return len(self.dims)

    def encode(self, actions: Array) -> Array:
        """float `[..., D]` -> int64 bins `[..., D]` (numpy in, numpy out; torch in, torch out)."""
        if isinstance(actions, torch.Tensor):
            _check_actions(actions.detach(), self.action_dim)
            bounds, lookup, _ = self._torch_tables(actions.device)
            x = actions.detach().to(torch.float64)
            out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
            for d in range(self.action_dim):
                col = x[..., d].contiguous()
                if len(bounds[d]):
                    out[..., d] = lookup[d][torch.searchsorted(bounds[d], col, right=True)]
                else:  # one value: every input is it
                    out[..., d] = lookup[d][0]
            return out
        x = _as_numpy(actions, self.action_dim, "actions").astype(np.float64)
        out = np.empty(x.shape, dtype=np.int64)
        for d in range(self.action_dim):
            out[..., d] = self._lookup[d][np.searchsorted(self._bounds[d], x[..., d], side="right")]
        return out

    def decode(self, bins: Array) -> Array:
        """int bins `[..., D]` in 0 .. num_bins - 1 -> float32 actions `[..., D]` (bin centres, exact values
        of discrete dimensions)."""
        if isinstance(bins, torch.Tensor):
            _check_bins(bins, self.action_dim, self.num_bins)
            _, _, centers = self._torch_tables(bins.device)
            return centers[torch.arange(self.action_dim, device=bins.device), bins.long()].to(torch.float32)
        bins = np.asarray(bins)
        _check_bins(bins, self.action_dim, self.num_bins)
        return self._centers[np.arange(self.action_dim), bins.astype(np.int64)].astype(np.float32)

    def bin_centers(self) -> np.ndarray:
        """float32 `[D, num_bins]`: what each bin of each dimension decodes to (e.g. for an expected value
        over the head's softmax)."""
        return self._centers.astype(np.float32)

    # ---- normalised errors ---------------------------------------------------------------------------------
    @property
    def scale(self) -> np.ndarray:
        """float32 `[D]`: each dimension's range (`DimensionStats.scale`)."""
        return np.array([d.scale for d in self.dims], dtype=np.float32)

    @property
    def offset(self) -> np.ndarray:
        """float32 `[D]`: where each dimension's range starts (`DimensionStats.low`: q01 of a binned one)."""
        return np.array([d.low for d in self.dims], dtype=np.float32)

    def normalize(self, actions: Array) -> Array:
        """(actions - offset) / scale: each dimension's range maps to [0, 1] (not clipped)."""
        offset, scale = self._affine(actions)
        return (actions - offset) / scale

    def unnormalize(self, values: Array) -> Array:
        """Inverse of `normalize`."""
        offset, scale = self._affine(values)
        return values * scale + offset

    def normalized_mse(self, predicted: Array, target: Array) -> Array:
        """Per-dimension MSE of `[..., D]` actions in units of each dimension's range: float `[D]`."""
        offset, scale = self._affine(predicted)
        err = (predicted - target) / scale
        return (err * err).reshape(-1, self.action_dim).mean(0)

    def _affine(self, like: Array) -> tuple[Array, Array]:
        offset, scale = self.offset, self.scale
        if isinstance(like, torch.Tensor):
            return (torch.as_tensor(offset, device=like.device, dtype=like.dtype),
                    torch.as_tensor(scale, device=like.device, dtype=like.dtype))
        return offset, scale

    # ---- files -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "num_bins": self.num_bins, "binning": self.binning,
                "percentiles": [1.0, 99.0], "dims": [asdict(d) for d in self.dims]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionTokenizer:
        if data.get("format") != FORMAT:
            raise ValueError(f"not action statistics: format={data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"action statistics version {data.get('version')!r}: this lapa reads {VERSION}")
        dims = [DimensionStats(**d) for d in data["dims"]]
        return cls(dims, int(data["num_bins"]), data["binning"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write `action_stats.json` atomically; `path` is the file or its directory. Returns the file."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / STATS_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActionTokenizer:
        """Read `action_stats.json` (the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_NAME
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: malformed action statistics ({type(err).__name__}: {err})") from None

    def __repr__(self) -> str:
        codes = ", ".join(f"{d.name}={d.code}" for d in self.dims)
        return f"ActionTokenizer(num_bins={self.num_bins}, binning={self.binning!r}, {codes})"

    def _torch_tables(self, device: torch.device) -> tuple[list, list, torch.Tensor]:
        if device not in self._torch_cache:
            self._torch_cache[device] = (
                [torch.as_tensor(b, dtype=torch.float64, device=device) for b in self._bounds],
                [torch.as_tensor(lk, dtype=torch.int64, device=device) for lk in self._lookup],
                torch.as_tensor(self._centers, dtype=torch.float64, device=device))
        return self._torch_cache[device]


# ---- fitting and tables of one dimension ---------------------------------------------------------------------
def _fit_dimension(name: str, x: np.ndarray, num_bins: int, binning: str, discrete_max_values: int,
                   min_range: float) -> DimensionStats:
    q01, q99 = (float(v) for v in np.percentile(x, [1.0, 99.0]))
    stats = {"name": name, "count": int(len(x)), "min": float(x.min()), "max": float(x.max()),
             "mean": float(x.mean()), "std": float(x.std()), "q01": q01, "q99": q99}
    distinct = np.unique(x)
    if len(distinct) <= discrete_max_values and distinct[-1] - distinct[0] > min_range:
        return DimensionStats(**stats, code="discrete", values=[float(v) for v in distinct])
    if q99 - q01 <= min_range:  # constant up to float noise and the outliers the spec clips
        return DimensionStats(**stats, code="discrete", values=[float(np.median(x))])
    if binning == "quantile":
        edges = np.quantile(x, np.linspace(0.01, 0.99, num_bins + 1))
        edges[0], edges[-1] = q01, q99
        return DimensionStats(**stats, code="quantile", edges=[float(e) for e in np.maximum.accumulate(edges)])
    return DimensionStats(**stats, code="uniform")


def _code_tables(dim: DimensionStats, num_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bounds float64 [m - 1], lookup int64 [m], centers float64 [num_bins]) of one dimension: a value
    falls into segment `searchsorted(bounds, x, right)` and is encoded as `lookup[segment]`."""
    if dim.code == "uniform":
        width = (dim.q99 - dim.q01) / num_bins
        bounds = dim.q01 + width * np.arange(1, num_bins)
        return bounds, np.arange(num_bins), dim.q01 + width * (np.arange(num_bins) + 0.5)
    if dim.code == "quantile":
        edges = np.asarray(dim.edges, dtype=np.float64)
        if len(edges) != num_bins + 1:
            raise ValueError(f"dimension {dim.name}: {len(edges)} edges for {num_bins} bins")
        return edges[1:-1], np.arange(num_bins), (edges[:-1] + edges[1:]) / 2
    if dim.code == "discrete":
        values = np.asarray(dim.values, dtype=np.float64)
        k = len(values)
        if not 1 <= k <= num_bins:
            raise ValueError(f"dimension {dim.name}: {k} discrete values for {num_bins} bins")
        # value j owns bins [j * num_bins / k, (j + 1) * num_bins / k); encoded as that part's middle bin
        lookup = ((np.arange(k) + 0.5) * num_bins / k).astype(np.int64)
        centers = values[np.arange(num_bins) * k // num_bins]
        return (values[:-1] + values[1:]) / 2, lookup, centers
    raise ValueError(f"dimension {dim.name}: unknown code {dim.code!r}")


# ---- input checks: one clear error instead of silent garbage ---------------------------------------------------
def _as_numpy(actions: Array, dim: int, what: str) -> np.ndarray:
    array = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
    _check_actions(array, dim, what)
    return array


def _check_actions(x: Array, dim: int, what: str = "actions") -> None:
    shape = tuple(x.shape)
    if len(shape) == 0 or shape[-1] != dim:
        raise ValueError(f"{what}: expected shape [..., {dim}], got {list(shape)}")
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{what}: expected real numbers, got {x.dtype}")
        bad = ~torch.isfinite(x.to(torch.float64))
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{what}: {int(bad.sum())} non-finite value(s), first at index {first}: "
                             f"{float(x[first])}")
        return
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{what}: expected real numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} non-finite value(s), first at index {first}: {x[first]}")


def _check_bins(bins: Array, dim: int, num_bins: int) -> None:
    shape = tuple(bins.shape)
    if len(shape) == 0 or shape[-1] != dim:
        raise ValueError(f"bins: expected shape [..., {dim}], got {list(shape)}")
    if isinstance(bins, torch.Tensor):
        if bins.is_floating_point() or bins.dtype == torch.bool:
            raise ValueError(f"bins: expected integers, got {bins.dtype}")
        low, high = (int(v) for v in torch.aminmax(bins)) if bins.numel() else (0, 0)
    else:
        if bins.dtype.kind not in "iu":
            raise ValueError(f"bins: expected integers, got dtype {bins.dtype}")
        low, high = (int(bins.min()), int(bins.max())) if bins.size else (0, 0)
    if low < 0 or high >= num_bins:
        raise ValueError(f"bins: values must be in 0..{num_bins - 1}, got {low}..{high}")
