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


# ------------------------------------------------------------------------------ beats_controls / beats_others
def test_beats_controls_one_sided_uses_the_stated_percentile_of_the_controls():
    from persona_lens.core.controls import beats_controls

    controls = [float(i) for i in range(100)]  # p95 of 0..99 is 94.05
    above = beats_controls(95.0, controls, two_sided=False, percentile=95)
    below = beats_controls(94.0, controls, two_sided=False, percentile=95)
    assert above.passed and not below.passed
    assert above.threshold == pytest.approx(94.05) and above.n == 100
    assert above.rank == pytest.approx(95.5) and below.rank == pytest.approx(94.5)  # each ties one control
    assert beats_controls(94.0, controls, two_sided=False, percentile=90).passed  # the percentile is the bar
    # lower is better: the distance below the center counts
    assert beats_controls(-95.0, [-c for c in controls], two_sided=False, higher_is_better=False).passed
    assert not beats_controls(95.0, controls, two_sided=False, higher_is_better=False).passed


def test_beats_controls_two_sided_counts_a_large_negative_control_against_the_value():
    """Random directions are sign-symmetric: a control at -0.9 is as far from no effect as one at +0.9."""
    from persona_lens.core.controls import beats_controls

    controls = [0.01 * i for i in range(-50, 50)] + [-0.9] * 10  # 110 controls, 10 of them far on the negative side
    one_sided = beats_controls(0.6, controls, two_sided=False)
    two_sided = beats_controls(0.6, controls, two_sided=True)
    assert one_sided.passed and not two_sided.passed
    assert two_sided.threshold == pytest.approx(0.9)
    # a value far on the negative side beats the controls two-sided (the sign was not fixed), not one-sided
    assert beats_controls(-0.95, controls, two_sided=True).passed
    assert not beats_controls(-0.95, controls, two_sided=False).passed


def test_beats_controls_centers_an_auroc_at_one_half():
    from persona_lens.core.controls import beats_controls

    controls = [0.5 + 0.001 * i for i in range(-50, 50)]
    assert beats_controls(0.2, controls, two_sided=True, center=0.5).passed  # a flipped screen still separates
    assert not beats_controls(0.2, controls, two_sided=False, center=0.5).passed
    assert not beats_controls(0.52, controls, two_sided=True, center=0.5).passed


def test_beats_controls_is_loud_about_too_few_controls_and_never_passes_nan():
    from persona_lens.core.controls import beats_controls

    with pytest.raises(ValueError, match="at least 20 control directions"):
        beats_controls(1.0, [0.0] * 19, two_sided=True, percentile=95)
    with pytest.raises(ValueError, match="at least 20"):  # nan controls do not count
        beats_controls(1.0, [0.0] * 19 + [math.nan] * 5, two_sided=True)
    with pytest.raises(ValueError, match="percentile"):
        beats_controls(1.0, [0.0] * 100, two_sided=True, percentile=100)
    verdict = beats_controls(math.nan, [0.0] * 100, two_sided=True)
    assert not verdict.passed and math.isnan(verdict.rank)
    assert "does not beat" in verdict.summary() and verdict.to_dict()["passed"] is False


def test_beats_others_by_absolute_value_a_negated_vector_is_not_far_behind():
    """Issue 24: the negated evil vector tracked hallucination at r -0.779 vs the vector's 0.793; signed, that is a
    lead of 1.57; by |value| it is 0.014, below a margin of 0.1."""
    from persona_lens.core.controls import beats_others

    others = {"evil": -0.779, "sycophancy": 0.71}
    by_abs = beats_others(0.793, others, margin=0.1)
    assert by_abs.best_other == "evil" and by_abs.lead == pytest.approx(0.014) and not by_abs.passed
    signed = beats_others(0.793, others, two_sided=False, margin=0.1)
    assert signed.best_other == "sycophancy" and signed.lead == pytest.approx(0.083)
    assert beats_others(0.793, {"evil": -0.6, "sycophancy": 0.5}, margin=0.1).passed
    # an AUROC: 0.2 separates as well as 0.8
    assert not beats_others(0.75, {"evil": 0.2}, center=0.5).passed
    assert beats_others(0.75, {"evil": 0.6}, center=0.5, margin=0.1).passed


def test_beats_others_is_loud_without_others_and_never_passes_an_undefined_one():
    from persona_lens.core.controls import beats_others

    with pytest.raises(ValueError, match="at least one other"):
        beats_others(0.9, {})
    assert not beats_others(0.9, {"evil": math.nan, "sycophancy": 0.1}).passed
    assert not beats_others(math.nan, {"evil": 0.1}).passed
    assert "does not beat" in beats_others(0.1, {"evil": 0.5}).summary()


def test_random_in_span_draws_unit_directions_inside_the_rows_span_only():
    from persona_lens.core.controls import random_in_span

    rows = torch.zeros(3, 10)
    rows[0, 0], rows[1, 1], rows[2, 0], rows[2, 1] = 1.0, 2.0, 3.0, -1.0  # rank 2: the (0, 1) plane
    draws = random_in_span(rows, 50, seed=1)
    assert draws.shape == (50, 10) and torch.allclose(draws.norm(dim=-1), torch.ones(50), atol=1e-5)
    assert float(draws[:, 2:].abs().max()) < 1e-6  # nothing outside the plane
    assert torch.equal(draws, random_in_span(rows, 50, seed=1)) and not torch.equal(draws, random_in_span(rows, 50))
    angles = torch.atan2(draws[:, 1], draws[:, 0])  # spread over the circle, not stuck on one axis
    assert float(angles.max() - angles.min()) > 4.0
    with pytest.raises(ValueError, match="span nothing"):
        random_in_span(torch.zeros(2, 5), 3)
