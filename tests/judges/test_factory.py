"""Choosing judges by name: rule judges are never cached; the coherence judge is chosen by --coherence."""

import pytest

from persona_lens.judges.cache import CachedJudge
from persona_lens.judges.factory import build_judges
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait


def test_rule_judges_are_not_put_behind_the_cache(tmp_path):
    """A cached rule score outlives edits to the rule: the stale-cache cause of issue 13's differing runs."""
    trait_judge, coherence_judge = build_judges(
        "rule", load_trait("pirate"), cache=tmp_path / "c.sqlite", coherence="rule"
    )
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

    trait_judge, coherence_judge = build_judges(
        "local", load_trait("pirate"), cache=tmp_path / "c.sqlite", model=load_cached("tiny-llama"), coherence="judge"
    )
    assert isinstance(trait_judge, CachedJudge) and coherence_judge is trait_judge


def test_offline_coherence_is_every_commands_default(tmp_path):
    import argparse

    from persona_lens.cli.options import add_judge_options
    from persona_lens.judges.factory import DEFAULT_COHERENCE
    from persona_lens.judges.offline import OfflineCoherenceJudge
    from tests.conftest import load_cached

    assert DEFAULT_COHERENCE == "offline"
    parser = argparse.ArgumentParser()
    add_judge_options(parser)
    assert parser.parse_args([]).coherence == "offline"
    model = load_cached("tiny-llama")
    trait = load_trait("pirate")
    _, coherence = build_judges("rule", trait, model=model)
    assert isinstance(coherence, OfflineCoherenceJudge)
    assert coherence.contexts == (None, trait.prompt_pairs[0].positive)
    assert not coherence.uses_model  # a tiny random model has no fit of its own: the model-free fit on the rules
    _, explicit = build_judges("rule", trait, model=model, coherence="rule")  # explicit choices keep working
    assert isinstance(explicit, RuleJudge)


def test_every_coherence_judging_command_defaults_to_offline():
    from persona_lens.cli import build_parser

    parser = build_parser()
    found = []
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        stack = [(name, sub)]
        while stack:
            label, p = stack.pop()
            for a in p._actions:
                if a.dest == "coherence":
                    found.append(label)
                    assert a.default == "offline", label
                if a.__class__.__name__ == "_SubParsersAction":
                    stack += [(f"{label} {n}", s) for n, s in a.choices.items()]
    assert {"extract", "sweep", "monitor sweep", "shift", "space build", "space cap-eval"} <= set(found)
