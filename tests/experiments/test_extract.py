"""The extraction pipeline: filtering, vectors, reports, resume after interruption, free reruns."""

import json

import pytest
import torch

import persona_lens.experiments.evaluate as E
import persona_lens.experiments.extract as X
from persona_lens.core.vectors import load_vector
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import load_cached


class CountingJudge:
    """A real rule judge that counts what it is asked (to prove caching and resume)."""

    def __init__(self, rule):
        self.inner = RuleJudge(rule)
        self.calls = 0

    @property
    def judge_id(self):
        return self.inner.judge_id

    def score(self, rubric, items):
        self.calls += len(items)
        return self.inner.score(rubric, items)

    def score_detailed(self, rubric, items):
        self.calls += len(items)
        return self.inner.score_detailed(rubric, items)


def _config(**kw):
    defaults = dict(n_samples=2, n_questions=3, n_pairs=2, max_new_tokens=6, batch_size=4, coherence_threshold=0.0)
    return X.ExtractConfig(**{**defaults, **kw})


def _run(model, out, config, judge=None, **kw):
    trait = load_trait("shouting")
    judge = judge or RuleJudge("shouting")
    return X.extract(
        model,
        trait,
        judge=judge,
        coherence_judge=RuleJudge("coherence"),
        config=config,
        out_dir=out,
        progress=False,
        **kw,
    )


def test_plan_pairs_every_question_prompt_and_sample():
    trait = load_trait("pirate")
    jobs = X.plan_jobs(trait, X.ExtractConfig(n_samples=3))
    assert len(jobs) == 2 * 5 * 20 * 3
    assert len({j.key for j in jobs}) == len(jobs)
    pos = [j for j in jobs if j.polarity == "pos"]
    assert {j.system for j in pos} == {p.positive for p in trait.prompt_pairs}


def test_extraction_writes_vectors_and_an_honest_report(tmp_path, tiny_model):
    result = _run(tiny_model, tmp_path, _config())
    report = result.report
    assert report["pairs"] == 3 * 2 * 2
    assert report["kept"] + sum(report["dropped"].values()) == report["pairs"]
    assert report["kept"] > 0
    vector = load_vector(X.vector_path(tmp_path))
    assert vector.vectors.shape == (tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model)
    assert vector.n_positive == vector.n_negative == report["kept"]
    assert {"response", "prompt", "last_prompt"} == set(result.vectors)
    assert len(report["per_layer"]) == tiny_model.cfg.n_layers + 1
    # every kept pair satisfies the paper's filter
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 2 * report["pairs"]
    assert (tmp_path / "report.md").read_text().startswith("# Persona vector: shouting")


def test_vector_is_the_mean_difference_of_kept_pairs(tmp_path):
    model = load_cached("tiny-llama")
    result = _run(model, tmp_path, _config())
    kept_keys = []
    for record in result.records.values():
        if record["polarity"] != "pos":
            continue
        neg = result.records[record["key"].replace("pos|", "neg|", 1)]
        if X._drop_reason(record, neg, _config()) is None:
            kept_keys.append((record, neg))
    from persona_lens.core.activations import collect_activations
    from persona_lens.core.chat import encode_generated, encode_prompt, make_messages

    def encoded(r):
        return encode_generated(
            encode_prompt(model.tokenizer, make_messages(r["question_text"], system=r["system"])), r["response_ids"]
        )

    pos = collect_activations(model, [encoded(p) for p, _ in kept_keys], batch_size=1, progress=False)
    neg = collect_activations(model, [encoded(n) for _, n in kept_keys], batch_size=1, progress=False)
    expected = pos.response_mean.mean(0) - neg.response_mean.mean(0)
    torch.testing.assert_close(result.vector.vectors, expected, rtol=1e-4, atol=1e-5)


def test_rerun_costs_nothing_and_interrupted_run_resumes_identically(tmp_path, monkeypatch):
    model = load_cached("tiny-qwen2")
    reference = _run(model, tmp_path / "fresh", _config())

    calls = {"n": 0}
    real_generate = E.generate

    def crashing_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(E, "generate", crashing_generate)
    with pytest.raises(KeyboardInterrupt):
        _run(model, tmp_path / "resumed", _config())
    partial = X.JsonlRecords(tmp_path / "resumed" / "responses.jsonl").load()
    assert 0 < len(partial) < 2 * reference.report["pairs"]
    monkeypatch.setattr(E, "generate", real_generate)
    resumed = _run(model, tmp_path / "resumed", _config())
    for key, record in reference.records.items():
        assert resumed.records[key]["response_ids"] == record["response_ids"]
    torch.testing.assert_close(resumed.vector.vectors, reference.vector.vectors)

    # a rerun of a finished extraction generates nothing; with a cached judge it judges nothing either
    from persona_lens.judges.cache import CachedJudge

    counting = CountingJudge("shouting")
    cached = CachedJudge(counting, tmp_path / "cache.sqlite")
    _run(model, tmp_path / "resumed", _config(), judge=cached)
    first_calls = counting.calls
    monkeypatch.setattr(E, "generate", lambda *a, **k: pytest.fail("a finished run must not generate"))
    _run(model, tmp_path / "resumed", _config(), judge=cached)
    assert counting.calls == first_calls


def test_changed_generation_settings_are_refused(tmp_path):
    model = load_cached("tiny-llama")
    _run(model, tmp_path, _config())
    with pytest.raises(ValueError, match="other settings"):
        _run(model, tmp_path, _config(temperature=0.5))


def test_no_pair_passing_is_a_clear_error(tmp_path):
    model = load_cached("tiny-llama")
    with pytest.raises(ValueError, match="no pair passed"):
        _run(model, tmp_path, _config(trait_threshold=101.0))


@pytest.mark.slow
def test_smollm2_pirate_vector_separates_the_prompts(tmp_path, smollm2):
    """On the real model the positive prompts elicit pirate speech more often than the negative ones."""
    trait = load_trait("pirate")
    config = X.ExtractConfig(n_samples=1, n_questions=6, n_pairs=2, max_new_tokens=32, batch_size=24)
    result = X.extract(
        smollm2,
        trait,
        judge=RuleJudge("pirate"),
        coherence_judge=RuleJudge("coherence"),
        config=config,
        out_dir=tmp_path,
        progress=False,
    )
    rates = result.report["trait_rate"]
    print("pirate trait rate: positive", rates["positive"], "negative", rates["negative"])
    assert rates["positive"] > rates["negative"]
    assert result.report["kept"] >= 1


def test_cached_judges_score_trait_and_coherence_separately(tmp_path):
    """Regression: an empty CachedJudge once counted as False, so ``coherence_judge or judge`` judged coherence
    with the trait judge."""
    from persona_lens.judges.cache import CachedJudge

    model = load_cached("tiny-llama")
    trait = load_trait("shouting")
    judge = CachedJudge(RuleJudge("shouting"), tmp_path / "cache.sqlite")
    coherence = CachedJudge(RuleJudge("coherence"), tmp_path / "cache.sqlite")
    result = X.extract(
        model, trait, judge=judge, coherence_judge=coherence, config=_config(), out_dir=tmp_path / "x", progress=False
    )
    for record in result.records.values():
        answer = record["response"]
        assert record["coherence"] == RuleJudge("coherence").score("", [(record["question_text"], answer)])[0]
        assert record["trait_score"] == RuleJudge("shouting").score("", [(record["question_text"], answer)])[0]
