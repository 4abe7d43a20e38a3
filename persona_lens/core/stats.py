"""Small statistics used by monitoring, finetuning shift and data screening (numpy only, no scipy).

Conventions:

* Inputs are 1-D sequences (lists, numpy arrays, torch tensors). ``None`` counts as missing (NaN): a judge that
  refused gives None. Correlation functions drop every pair where either value is missing; :func:`auroc` drops
  samples whose score is missing.
* A statistic that is undefined (fewer than 2 pairs, a constant variable, a single class) is ``nan``, never an
  exception: a sweep where every answer scored 0 must still produce its report.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "finite_pairs",
    "pearson",
    "rankdata",
    "spearman",
    "condition_means",
    "per_condition_correlations",
    "within_condition_correlation",
    "auroc",
    "fisher_ci",
    "mean_sem",
]


def as_float_array(values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array, with ``None`` as NaN."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().double().numpy()
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype(np.float64).ravel()
    return np.asarray(
        [np.nan if v is None else float(v) for v in np.asarray(values, dtype=object).ravel()], dtype=np.float64
    )


def finite_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, keep)``: the pairs where both values are finite, and the boolean mask that selected them."""
    xa, ya = as_float_array(x), as_float_array(y)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.shape[0]} and {ya.shape[0]}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep], keep


def _pearson_clean(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape[0] < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0.0:
        return math.nan
    return float(np.clip(float(dx @ dy) / denominator, -1.0, 1.0))


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation of the finite pairs; nan with fewer than 2 pairs or a constant variable."""
    xa, ya, _ = finite_pairs(x, y)
    return _pearson_clean(xa, ya)


def rankdata(values: Any) -> np.ndarray:
    """Ranks 1..n, ties given the average of the ranks they span (as ``scipy.stats.rankdata``'s default)."""
    a = as_float_array(values)
    if np.isnan(a).any():
        raise ValueError("rankdata got missing values; drop them first")
    order = np.argsort(a, kind="mergesort")
    sorted_values = a[order]
    ranks = np.empty(a.shape[0], dtype=np.float64)
    start = 0
    n = a.shape[0]
    while start < n:
        stop = start + 1
        while stop < n and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of the finite pairs (Pearson of average ranks)."""
    xa, ya, _ = finite_pairs(x, y)
    if xa.shape[0] < 2:
        return math.nan
    return _pearson_clean(rankdata(xa), rankdata(ya))


def _groups(conditions: Sequence[Hashable], keep: np.ndarray) -> dict[Hashable, np.ndarray]:
    labels = list(conditions)
    if len(labels) != keep.shape[0]:
        raise ValueError(f"conditions has {len(labels)} labels but there are {keep.shape[0]} values")
    groups: dict[Hashable, list[int]] = {}
    for index, (label, kept) in enumerate(zip(labels, keep)):
        if kept:
            groups.setdefault(label, []).append(index)
    return {label: np.asarray(index) for label, index in groups.items()}


def condition_means(values: Any, conditions: Sequence[Hashable]) -> dict[Hashable, float]:
    """Mean of the finite values of each condition (in order of first appearance)."""
    a = as_float_array(values)
    keep = np.isfinite(a)
    return {label: float(a[index].mean()) for label, index in _groups(conditions, keep).items()}


def per_condition_correlations(x: Any, y: Any, conditions: Sequence[Hashable]) -> dict[Hashable, float]:
    """Pearson correlation inside each condition separately (nan where a condition has < 2 pairs or no spread)."""
    xa, ya = as_float_array(x), as_float_array(y)
    keep = np.isfinite(xa) & np.isfinite(ya)
    return {label: _pearson_clean(xa[index], ya[index]) for label, index in _groups(conditions, keep).items()}


def within_condition_correlation(x: Any, y: Any, conditions: Sequence[Hashable], method: str = "demean") -> float:
    """Correlation of ``x`` and ``y`` with the differences *between* conditions taken out.

    * ``method="demean"`` (the default, "pooled within-condition correlation"): subtract each condition's mean
      from ``x`` and from ``y`` (over the finite pairs), then one Pearson correlation over all pairs. Conditions
      with a single pair contribute zeros, which do not change the result.
    * ``method="mean"``: the plain mean of the per-condition Pearson correlations, over the conditions where it is
      defined.
    """
    xa, ya = as_float_array(x), as_float_array(y)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.shape[0]} and {ya.shape[0]}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    groups = _groups(conditions, keep)
    if method == "demean":
        dx, dy = [], []
        for index in groups.values():
            dx.append(xa[index] - xa[index].mean())
            dy.append(ya[index] - ya[index].mean())
        if not dx:
            return math.nan
        return _pearson_clean(np.concatenate(dx), np.concatenate(dy))
    if method == "mean":
        values = [_pearson_clean(xa[index], ya[index]) for index in groups.values()]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan
    raise ValueError(f"unknown method {method!r}; use 'demean' or 'mean'")


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for telling ``labels`` True (positive) from False.

    Equals the probability that a random positive scores above a random negative, ties counting one half (the
    Mann-Whitney U statistic over n_pos * n_neg). Samples with a missing score are dropped; nan when a class is
    empty.
    """
    s = as_float_array(scores)
    raw_labels = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels).ravel()
    if raw_labels.shape[0] != s.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} values but labels has {raw_labels.shape[0]}")
    unique = set(np.unique(raw_labels).tolist())
    if not unique <= {0, 1}:
        raise ValueError(f"labels must be booleans or 0/1, got values {sorted(unique)[:5]}")
    y = raw_labels.astype(bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def fisher_ci(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson ``r`` from ``n`` pairs (Fisher z); ``(nan, nan)`` when n <= 3 or r is nan."""
    if n <= 3 or math.isnan(r):
        return math.nan, math.nan
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = min(max(r, -0.999999999), 0.999999999)
    z = math.atanh(r)
    half = NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def mean_sem(values: Any) -> tuple[float, float, int]:
    """``(mean, standard error of the mean, n)`` of the finite values; sem is nan for n < 2, both nan for n = 0."""
    a = as_float_array(values)
    a = a[np.isfinite(a)]
    n = int(a.shape[0])
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(a[0]), math.nan, 1
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(n)), n
