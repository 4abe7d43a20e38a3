"""Issue 24 on SmolLM2-135M-Instruct (d_model 576): one relative claim, asserted through the controls' one rule.

The French prompt-contrast vector (last-prompt activations at layer 20, positive minus negative system prompts, on
the trait's first 5 extraction questions) screens the French trait's positive from its negative system prompts on the
first 10 disjoint evaluation questions (AUROC of the last-prompt projection) beyond the 95th percentile of 200 random
directions (one-sided: the positive prompts are meant to project higher) and beyond the pirate, emoji and
enthusiastic vectors by |AUROC - 0.5| (margin 0.1). ``benchmarks/smollm2_controls.py`` prints the same for every
trait, and the generation-based claim beside it.
"""

import pytest

from benchmarks.smollm2_controls import TRAITS, prompt_contrast_vectors, screen_prompts


@pytest.mark.slow
def test_smollm2_french_vector_screens_its_prompts_beyond_random_directions_and_other_traits(smollm2):
    vectors = prompt_contrast_vectors(smollm2, TRAITS, 20, n_questions=5)
    claim = screen_prompts(smollm2, vectors, "french", 20, k=200, n_questions=10)
    print(f"\n{claim.random.summary()}\n{claim.others.summary()}")
    assert claim.random.n == 200
    assert claim.random.passed, claim.random.summary()
    assert claim.others.passed, claim.others.summary()
