"""Statistics against independent brute-force computations (explicit loops, pairwise counts)."""

import itertools
import math
import random

import numpy as np
import pytest
import torch

from persona_lens.core import stats


def _pearson_loops(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def test_pearson_matches_the_textbook_formula_and_numpy():
    rng = random.Random(1)
    x = [rng.gauss(0, 1) for _ in range(37)]
    y = [0.6 * a + rng.gauss(0, 1) for a in x]
    assert stats.pearson(x, y) == pytest.approx(_pearson_loops(x, y), abs=1e-12)
    as_tensor = torch.tensor(y, dtype=torch.float64)
    assert stats.pearson(np.array(x), as_tensor) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert stats.pearson(x, [2 * a + 1 for a in x]) == pytest.approx(1.0)
    assert stats.pearson(x, [-a for a in x]) == pytest.approx(-1.0)


def test_pearson_drops_missing_pairs_and_is_nan_when_undefined():
    x = [1.0, 2.0, None, 4.0, 5.0, float("nan")]
    y = [2.0, 1.0, 3.0, None, 7.0, 1.0]
    assert stats.pearson(x, y) == pytest.approx(_pearson_loops([1.0, 2.0, 5.0], [2.0, 1.0, 7.0]))
    assert math.isnan(stats.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(stats.pearson([1], [2]))
    with pytest.raises(ValueError, match="same length"):
        stats.pearson([1, 2], [1, 2, 3])


def _brute_ranks(values):
    return [sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values]


def test_rankdata_averages_ties():
    values = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    assert stats.rankdata(values).tolist() == _brute_ranks(values)


def test_spearman_is_pearson_of_brute_force_ranks():
    rng = random.Random(2)
    x = [rng.randint(0, 5) for _ in range(30)]
    y = [a + rng.randint(-2, 2) for a in x]
    assert stats.spearman(x, y) == pytest.approx(_pearson_loops(_brute_ranks(x), _brute_ranks(y)))


def test_within_condition_demeaned_and_mean_of_per_condition():
    rng = random.Random(3)
    conditions = [c for c in "abcd" for _ in range(6)]
    offsets = {"a": 0.0, "b": 5.0, "c": 10.0, "d": 20.0}
    x = [offsets[c] + rng.gauss(0, 1) for c in conditions]
    y = [offsets[c] * 3 + 0.5 * (xi - offsets[c]) + rng.gauss(0, 1) for c, xi in zip(conditions, x)]
    # Independent: loops over conditions.
    dx, dy, per = [], [], []
    for c in "abcd":
        xs = [xi for xi, ci in zip(x, conditions) if ci == c]
        ys = [yi for yi, ci in zip(y, conditions) if ci == c]
        dx += [v - sum(xs) / len(xs) for v in xs]
        dy += [v - sum(ys) / len(ys) for v in ys]
        per.append(_pearson_loops(xs, ys))
    assert stats.within_condition_correlation(x, y, conditions) == pytest.approx(_pearson_loops(dx, dy))
    assert stats.within_condition_correlation(x, y, conditions, method="mean") == pytest.approx(sum(per) / 4)
    assert stats.per_condition_correlations(x, y, conditions) == pytest.approx(dict(zip("abcd", per)))
    # Between-condition differences dominate the overall correlation but not the within-condition one.
    assert stats.pearson(x, y) > 0.95
    assert stats.within_condition_correlation(x, y, conditions) < 0.9
    with pytest.raises(ValueError, match="method"):
        stats.within_condition_correlation(x, y, conditions, method="median")


def test_condition_means_and_mean_sem():
    assert stats.condition_means([1, 2, None, 4], ["a", "a", "b", "b"]) == {"a": 1.5, "b": 4.0}
    mean, sem, n = stats.mean_sem([1.0, 2.0, 3.0, None])
    assert (mean, n) == (2.0, 3) and sem == pytest.approx(1.0 / math.sqrt(3))
    assert math.isnan(stats.mean_sem([])[0])


def _auroc_pairs(scores, labels):
    pos = [s for s, lab in zip(scores, labels) if lab]
    neg = [s for s, lab in zip(scores, labels) if not lab]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_count_with_ties():
    rng = random.Random(4)
    for _ in range(20):
        labels = [rng.random() < 0.4 for _ in range(25)]
        labels[0], labels[1] = True, False
        scores = [rng.randint(0, 4) + (1 if lab else 0) for lab in labels]  # many ties
        assert stats.auroc(scores, labels) == pytest.approx(_auroc_pairs(scores, labels))


def test_auroc_edge_cases():
    assert stats.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert stats.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert stats.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert math.isnan(stats.auroc([1, 2], [1, 1]))
    assert stats.auroc([1, None, 3, 0], [0, 1, 1, 0]) == 1.0  # missing score dropped
    with pytest.raises(ValueError, match="labels"):
        stats.auroc([1, 2, 3], [0, 1, 2])


def test_fisher_interval_contains_r_and_narrows_with_n():
    low, high = stats.fisher_ci(0.5, 20)
    assert low < 0.5 < high
    low2, high2 = stats.fisher_ci(0.5, 200)
    assert high2 - low2 < high - low
    assert math.isnan(stats.fisher_ci(0.5, 3)[0])
