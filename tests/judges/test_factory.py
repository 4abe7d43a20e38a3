"""Choosing judges by name: rule judges are never cached; the coherence judge is chosen by --coherence."""

import pytest

from persona_lens.judges.cache import CachedJudge
from persona_lens.judges.factory import build_judges
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait


def test_rule_judges_are_not_put_behind_the_cache(tmp_path):
    """A cached rule score outlives edits to the rule: the stale-cache cause of issue 13's differing runs."""
    trait_judge, coherence_judge = build_judges("rule", load_trait("pirate"), cache=tmp_path / "c.sqlite",
                                                coherence="rule")
    assert isinstance(trait_judge, RuleJudge) and isinstance(coherence_judge, RuleJudge)
    assert coherence_judge.rule == "coherence"


def test_likelihood_coherence_needs_the_model_and_bad_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs the model"):
        build_judges("rule", load_trait("pirate"), coherence="likelihood")
    with pytest.raises(ValueError, match="needs the model"):
        build_judges("rule", load_trait("pirate"), coherence="auto")  # auto: likelihood for rule-measured traits
    with pytest.raises(ValueError, match="unknown coherence"):
        build_judges("rule", load_trait("pirate"), coherence="vibes")


def test_non_rule_judges_stay_cached(tmp_path):
    from tests.conftest import load_cached

    trait_judge, coherence_judge = build_judges("local", load_trait("pirate"), cache=tmp_path / "c.sqlite",
                                                model=load_cached("tiny-llama"), coherence="judge")
    assert isinstance(trait_judge, CachedJudge) and coherence_judge is trait_judge
