"""Controls: seeded random directions with the vector's norms, and the Baseline that ranks a vector among them."""

import math

import pytest
import torch

from persona_lens.core.controls import compare, project_rows, random_directions, random_like


def test_random_directions_are_seeded_unit_scaled_and_reproducible():
    a = random_directions(16, 5, seed=3, norm=2.0)
    b = random_directions(16, 5, seed=3, norm=2.0)
    c = random_directions(16, 5, seed=4, norm=2.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=-1), torch.full((5,), 2.0))


def test_random_like_keeps_each_layers_norm_and_zero_rows():
    vectors = torch.randn(4, 8)
    vectors[0] = 0
    draws = random_like(vectors, 7, seed=0)
    assert draws.shape == (7, 4, 8)
    assert torch.allclose(draws.norm(dim=-1), vectors.norm(dim=-1).expand(7, 4), atol=1e-5)
    assert torch.equal(draws[:, 0], torch.zeros(7, 8))


def test_planted_direction_ranks_first_and_a_random_one_ranks_in_the_middle():
    """Activations whose spread along a planted direction carries the label: the planted direction's correlation
    with the label beats every random direction; one more random direction lands inside the band."""
    generator = torch.Generator().manual_seed(0)
    d, n = 32, 200
    planted = torch.zeros(d)
    planted[0] = 1.0
    labels = torch.randn(n, generator=generator)
    acts = torch.randn(n, d, generator=generator)
    acts[:, 0] += 3 * labels
    controls = random_directions(d, 100, seed=1)
    proj = project_rows(acts, torch.cat([planted[None], controls, random_directions(d, 1, seed=99)]))

    def corr(x):
        return float(torch.corrcoef(torch.stack([x, labels]))[0, 1])

    values = [corr(row) for row in proj]
    vector = compare("r", values[0], values[1:101])
    assert vector.percentile == 100.0 and vector.beats_random
    stranger = compare("r", values[101], values[1:101])
    assert 5 <= stranger.percentile <= 95 and not stranger.beats_random


def test_baseline_reports_cross_trait_margin_flipped_and_lower_is_better():
    base = compare("auroc", 0.9, [0.4, 0.5, 0.6], others={"evil": 0.7, "other": float("nan")}, flipped=0.1)
    assert math.isclose(base.margin_over_others(), 0.2)
    record = base.to_dict()
    assert record["random_n"] == 3 and record["flipped"] == 0.1 and record["beats_random"]
    assert "evil 0.7" in base.summary()
    lower = compare("loss", 0.1, [0.5, 0.6, 0.7], higher_is_better=False)
    assert lower.percentile == 100.0 and lower.beats_random


def test_bad_k_and_zero_direction_are_refused():
    with pytest.raises(ValueError, match="positive int"):
        random_directions(4, 0)
    with pytest.raises(ValueError, match="zero norm"):
        project_rows(torch.randn(3, 4), torch.zeros(1, 4))


def test_baseline_round_trips_through_its_dict():
    base = compare("r", 0.5, [0.1, -0.2, 0.3], others={"evil": 0.2}, flipped=-0.5)
    again = type(base).from_dict(base.to_dict())
    assert again == base and again.summary() == base.summary()
