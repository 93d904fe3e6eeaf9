"""Paired comparisons with bootstrap intervals, for evaluations that share prompts and noise.

An evaluation scores one image per item (prompt, eval seed); every method and every step
uses the same items with the same initial noise, so two evaluations are compared item by
item (paired). Between training runs, methods are paired by training seed (the same seed
gives both methods the same per-iteration noise streams).

A difference is stated with a percentile bootstrap interval. Over a [runs, items] table
the bootstrap resamples runs and items (both with replacement), so the interval covers
training-seed variation as well as the finite set of test items.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (1 - alpha) bootstrap interval."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value

    def fmt(self, digits: int = 3, signed: bool = True) -> str:
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def _percentiles(samples: np.ndarray, point: float, alpha: float) -> Interval:
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return Interval(point, float("nan"), float("nan"))
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(float(point), float(low), float(high))


def paired_bootstrap(a: np.ndarray, b: np.ndarray | None = None, *, resamples: int = DEFAULT_RESAMPLES,
                     alpha: float = 0.05, seed: int = 0) -> Interval:
    """Interval of mean(a - b) for paired tables a, b of shape [items] or [runs, items].

    b None: the interval of mean(a) itself. Runs and items are resampled independently
    (a two-way bootstrap), so a 2-D interval includes the spread between training seeds.
    """
    d = np.asarray(a, dtype=np.float64) - (0.0 if b is None else np.asarray(b, dtype=np.float64))
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"expected a non-empty [items] or [runs, items] table, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    runs, items = d.shape
    rows = np.zeros((resamples, runs), dtype=np.int64)
    cols = np.empty((resamples, items), dtype=np.int64)
    for k in range(resamples):  # drawn one resample at a time: the stream, so every interval, stays as it was
        if runs > 1:
            rows[k] = rng.integers(0, runs, runs)
        cols[k] = rng.integers(0, items, items)
    # The mean of d[rows_k][:, cols_k] is w_k^T d v_k / (runs items), with w_k and v_k the times
    # each run and each item was drawn: one product for all resamples instead of a gather each.
    row_counts = np.bincount((rows + runs * np.arange(resamples)[:, None]).ravel(), minlength=resamples * runs)
    col_counts = np.bincount((cols + items * np.arange(resamples)[:, None]).ravel(), minlength=resamples * items)
    out = np.einsum("kr,ri,ki->k", row_counts.reshape(resamples, runs).astype(np.float64), d,
                    col_counts.reshape(resamples, items).astype(np.float64)) / (runs * items)
    return _percentiles(out, d.mean(), alpha)


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, alpha: float = 0.05,
                    seed: int = 0) -> Interval:
    """Interval of mean(a) / mean(b) for per-run values paired by training seed ([runs] each).

    Runs where either value is missing (NaN: the target was never reached) are left out.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for k in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        out[k] = a[idx].mean() / b[idx].mean() if b[idx].mean() != 0 else np.nan
    return _percentiles(out, a.mean() / b.mean() if b.mean() != 0 else float("nan"), alpha)


def bootstrap_mean_diff(a: np.ndarray, b: np.ndarray, **kwargs) -> Interval:
    """Interval of mean(a - b) for per-run scalars paired by training seed ([runs] each)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return paired_bootstrap(a[keep][:, None], b[keep][:, None], **kwargs) if keep.any() \
        else Interval(float("nan"), float("nan"), float("nan"))


def read_eval_items(samples_dir: Path, metric: str = "reward") -> dict[tuple[str, int], float]:
    """{(prompt, seed): value} of one evaluation's index.json (metric: reward or strict)."""
    index = json.loads((Path(samples_dir) / "index.json").read_text())
    return {(row["prompt"], int(row["seed"])): float(row[metric]) for row in index}


def aligned(evals: list[dict[tuple[str, int], float]]) -> np.ndarray:
    """Stack evaluations on their common items, in one fixed order. [len(evals), items]."""
    common = sorted(set.intersection(*(set(e) for e in evals)))
    if not common:
        raise ValueError("the evaluations share no (prompt, seed) items: they cannot be paired")
    return np.array([[e[k] for k in common] for e in evals])


@dataclass(frozen=True)
class PairedChange(Interval):
    """An evaluation's change between two steps over its common items."""

    items: int = 0


def paired_change(before_dir: Path, after_dir: Path, metric: str = "strict", **kwargs) -> PairedChange:
    """mean(after - before) of one metric over the items two evaluations share, with its
    paired bootstrap interval (one run: items are resampled)."""
    table = aligned([read_eval_items(before_dir, metric), read_eval_items(after_dir, metric)])
    change = paired_bootstrap(table[1], table[0], **kwargs)
    return PairedChange(change.mean, change.low, change.high, items=table.shape[1])
