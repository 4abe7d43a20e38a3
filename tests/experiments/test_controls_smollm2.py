"""Issue 24 on SmolLM2-135M-Instruct (d_model 576): one relative claim, asserted through the controls' one rule.

The French prompt-contrast vector (last-prompt activations at layer 20, positive minus negative system prompts, on
the trait's first 5 extraction questions) screens the French trait's positive from its negative system prompts on
the first 10 disjoint evaluation questions (AUROC of the last-prompt projection) beyond the 95th percentile of 200
random directions (one-sided: the positive prompts are meant to project higher). Beside it, the cross-trait claim
(beyond the pirate, emoji and enthusiastic vectors by |AUROC - 0.5|, margin 0.1) fails and is a strict xfail.
``benchmarks/smollm2_controls.py`` prints the same for every trait (benchmarks/results/organism-claims.md).
"""

import pytest

from benchmarks.smollm2_controls import TRAITS, prompt_contrast_vectors, screen_prompts


@pytest.fixture(scope="module")
def french_claim():
    from persona_lens.core.models import SMOLLM2
    from tests.conftest import load_cached

    model = load_cached(SMOLLM2)
    vectors = prompt_contrast_vectors(model, TRAITS, 20, n_questions=5)
    claim = screen_prompts(model, vectors, "french", 20, k=200, n_questions=10)
    print(f"\n{claim.random.summary()}\n{claim.others.summary()}")
    return claim


@pytest.mark.slow
def test_smollm2_french_vector_screens_its_prompts_beyond_random_directions(french_claim):
    assert french_claim.random.n == 200
    assert french_claim.random.passed, french_claim.random.summary()


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "measured 2026-12-07: AUROC 0.997 vs pirate 0.955, enthusiastic 0.912, emoji 0.844 (lead 0.042 over pirate by "
        "|AUROC - 0.5| < 0.1): the prompt-contrast vectors share a 'persona instruction vs plain helpful assistant' "
        "direction (cosine french-pirate 0.717); see benchmarks/results/organism-claims.md"
    ),
)
def test_smollm2_french_vector_screens_its_prompts_beyond_the_other_traits_vectors(french_claim):
    assert french_claim.others.passed, french_claim.others.summary()
