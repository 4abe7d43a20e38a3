"""PC1 vs the Assistant axis against random directions *within the roles' own span* (issue 24).

PC1 lies in the span of the centred role vectors by construction, so random directions of all ``d_model`` only test
that the axis lies near that span. :func:`persona_lens.experiments.space.measure_pc1_in_span` draws the random
directions within the span (:func:`persona_lens.core.controls.random_in_span`). Measured first on planted data (the
instrument: a planted axis is found, and with no structure the rule passes about 5% of the time, as its 95th
percentile says), then on SmolLM2-135M-Instruct with every role of ``traits/roles/`` (slow;
``benchmarks/smollm2_roles_axis.py`` prints the same figures at more layers, benchmarks/results/organism-claims.md).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.smollm2_roles_axis import build_smollm2_space, first_replies
from persona_lens.experiments import space as sp

N_LAYERS, D = 2, 48
#: Random directions within the span (a matmul each).
N_RANDOM = 200
#: Non-default roles the claim needs for the span not to be trivial (the organism has 3: its PC1 test is an xfail).
MIN_ROLES = 8


def _space(seed: int, *, n_roles: int = 9, planted: float = 0.0) -> tuple[sp.PersonaSpace, torch.Tensor]:
    """Isotropic Gaussian role vectors and default replies; ``planted`` > 0 spreads the roles along one direction u
    and puts the default far along it (so PC1 and the axis both follow u)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N_LAYERS + 1, D, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    spread = torch.linspace(-1, 1, n_roles)[:, None, None]
    roles = torch.randn(n_roles, N_LAYERS + 1, D, generator=g) + planted * spread * u
    default = torch.randn(6, N_LAYERS + 1, D, generator=g) + planted * 2.0 * u
    space = sp.fit_space({f"r{i}": roles[i] for i in range(n_roles)}, default)
    return space, u


def test_span_control_finds_a_planted_axis_and_reports_the_span():
    space, u = _space(0, planted=8.0)
    result = sp.measure_pc1_in_span(space, 1, k_random=N_RANDOM)
    assert result.span_rank == 8 and result.n_roles == 9  # 9 centred vectors sum to zero: rank 8
    assert result.value > 0.95 * result.axis_share_in_span and result.verdict.passed, result.summary()
    assert result.verdict.n == N_RANDOM and len(result.random) == N_RANDOM
    # every direction drawn lies in the span: its |cos| with the axis is bounded by the axis' share in the span
    assert max(result.random) <= result.axis_share_in_span + 1e-6
    assert result.value <= result.axis_share_in_span + 1e-6
    assert 0.0 < result.axis_share_in_span <= 1.0


def test_axis_share_in_span_is_one_inside_the_span_and_zero_orthogonal_to_it():
    space, _ = _space(1)
    centred = space.role_vectors[:, 1] - space.center[1]
    inside = centred[0] + 2 * centred[3]
    basis = torch.linalg.svd(centred.double(), full_matrices=False)[2][:8]
    outside = torch.randn(D, dtype=torch.float64)
    outside = outside - basis.T @ (basis @ outside)
    for axis, share in ((inside, 1.0), (outside.float(), 0.0)):
        moved = sp.PersonaSpace(
            space.model_name,
            space.roles,
            space.default_role,
            space.role_vectors,
            space.default_activations,
            space.axis.clone(),
            space.center,
            space.components,
            space.explained,
        )
        moved.axis[1] = axis
        assert sp.measure_pc1_in_span(moved, 1, k_random=20).axis_share_in_span == pytest.approx(share, abs=1e-5)


def test_span_control_passes_at_its_stated_rate_when_nothing_is_planted():
    """With no structure the axis is independent of the centred roles, so PC1 is one more random direction of the
    span: the rule (beyond the 95th percentile) must pass about 5% of the time, not more."""
    passed = [sp.measure_pc1_in_span(_space(seed)[0], 1, k_random=N_RANDOM).verdict.passed for seed in range(200)]
    rate = sum(passed) / len(passed)
    assert 0.02 <= rate <= 0.09, rate


def test_span_control_refuses_a_zero_axis():
    space, _ = _space(2)
    space.axis[1] = 0.0
    with pytest.raises(ValueError, match="zero at layer 1"):
        sp.measure_pc1_in_span(space, 1)


# ---------------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct with every role of traits/roles/ (slow: 690 s wall at load ~8, most of it the space build)

#: Build settings (greedy, 4 build questions x 3 system prompts per role, 32 new tokens): chosen for cost before the
#: claim was measured; benchmarks/smollm2_roles_axis.py takes the same as its defaults.
SMOL = {"questions": 4, "prompts": 3, "tokens": 32, "temperature": 0.0}
#: Layers stated beforehand: 15, the middle layer (the paper reads the axis at a middle layer), and 20, the layer of
#: the project's other SmolLM2 figures (monitoring, drift, controls).
SMOL_LAYERS = (15, 20)
#: Measured misses (strict xfails), with their figures.
SMOL_KNOWN_FAILURES = {
    20: "measured 2026-12-07 (greedy, 11 roles kept: emoji and shouting not played): |cos(PC1, axis)| 0.193 vs 200 "
    "random directions within the span of the 11 centred role vectors (rank 10; the axis has 63.2% of its norm in "
    "it): p95 0.376, rank 64.5. PC1 beats the in-span control at layers 1-15 (ranks 98-100), not at 20-30 "
    "(64.5, 53, 10); see benchmarks/results/organism-claims.md",
}


@pytest.fixture(scope="module")
def smol_roles_space(tmp_path_factory):
    from persona_lens.core.models import SMOLLM2
    from tests.conftest import load_cached

    out = tmp_path_factory.mktemp("smol_roles")
    space, _ = build_smollm2_space(load_cached(SMOLLM2), out, **SMOL)
    print("\nroles kept:")
    for name, report in space.meta["roles"].items():
        print(f"  {name}: {report['n_kept']}/{report['n_replies']} (in-role rate {report['in_role_rate']})")
    for name, reply in first_replies(out, space).items():
        print(f"  {name}: {reply!r}")
    print(f"  skipped: {sorted(space.meta['skipped'])}")
    return space


@pytest.mark.slow
def test_smollm2_space_has_enough_roles_for_a_nontrivial_span(smol_roles_space):
    assert len(smol_roles_space.roles) >= MIN_ROLES, smol_roles_space.meta["skipped"]
    result = sp.measure_pc1_in_span(smol_roles_space, SMOL_LAYERS[0], k_random=N_RANDOM)
    assert result.span_rank == len(smol_roles_space.roles) - 1, result.summary()


@pytest.mark.slow
@pytest.mark.parametrize("layer", SMOL_LAYERS)
def test_smollm2_pc1_aligns_with_the_axis_beyond_random_directions_within_the_roles_span(
    smol_roles_space, layer, request
):
    """|cos(PC1, axis)| beyond the 95th percentile of 200 random unit directions within the span of the (>= 8)
    centred role vectors, two-sided by |cos|; the random-in-d_model band is printed beside it."""
    if layer in SMOL_KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=SMOL_KNOWN_FAILURES[layer]))
    result = sp.measure_pc1_in_span(smol_roles_space, layer, k_random=N_RANDOM)
    d_model = sp.axis_alignment(smol_roles_space, k_random=N_RANDOM, layers=[layer])["layers"][0]
    print(f"\n  {result.summary()}\n  random in d_model: {d_model['pc1_axis_summary']}")
    assert len(smol_roles_space.roles) >= MIN_ROLES
    assert result.verdict.passed, result.summary()


def test_a_span_of_one_dimension_is_refused_not_a_control_equal_to_the_value():
    """Two roles centred span a line: every random direction in it is +-PC1, so all 200 controls equalled the value
    (|cos| 0.391 for seed 0) and the verdict was a test of nothing. Three roles (a plane) still run."""
    space, _ = _space(0, n_roles=2)
    with pytest.raises(ValueError, match="span 1 dimension"):
        sp.measure_pc1_in_span(space, 1, k_random=N_RANDOM)
    three, _ = _space(0, n_roles=3)
    result = sp.measure_pc1_in_span(three, 1, k_random=N_RANDOM)
    assert result.span_rank == 2 and len(set(result.random)) > 1
