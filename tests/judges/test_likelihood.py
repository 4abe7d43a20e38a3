"""The likelihood coherence judge: exact NLLs, hooks refused, calibration, mapping, caching; on SmolLM2 the texts
that fooled the rule (issue 13) fail it and genuine answers pass."""

import math

import pytest
import torch

import persona_lens.judges.likelihood as L
from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.hooks import steer
from persona_lens.judges.base import COHERENCE_RUBRIC
from persona_lens.judges.cache import CachedJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import load_cached

Q = "What do you like to eat for lunch?"
PLAIN = "I usually have a sandwich with some salad and a piece of fruit for lunch."


def _manual_nll(model, question, answer):
    prompt = encode_prompt(model.tokenizer, make_messages(question))
    reply = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + reply]))
    logp = logits[0, len(prompt) - 1 : -1].double().log_softmax(-1)
    return float(-logp.gather(-1, torch.tensor(reply)[:, None]).mean())


def _rows(model, items):
    return [
        (encode_prompt(model.tokenizer, make_messages(q)), model.tokenizer(a, add_special_tokens=False)["input_ids"])
        for q, a in items
    ]


def test_response_nll_is_the_mean_token_nll_and_independent_of_the_batch(tiny_model):
    items = [
        (Q, PLAIN),
        (Q, "Soup."),
        ("Where do you live?", "In a small house by the river, with my cat."),
        (Q, "Soup!"),
    ]  # the last two rows share a length with others, so they share a batch
    values = L.response_nlls(tiny_model, _rows(tiny_model, items), batch_size=4)
    for (q, a), value in zip(items, values):
        assert value == pytest.approx(_manual_nll(tiny_model, q, a), rel=1e-4)
        alone = L.response_nlls(tiny_model, _rows(tiny_model, [(q, a)]))[0]
        assert alone == value  # exactly: no padding, so the companions of a row do not change its score


def test_scoring_refuses_a_steered_model(tiny_model):
    vector = torch.randn(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model)
    with steer(tiny_model, vector, layer=1, coef=4.0, raw=True), pytest.raises(RuntimeError, match="unsteered"):
        L.response_nlls(tiny_model, _rows(tiny_model, [(Q, PLAIN)]))
    L.check_unhooked(tiny_model)  # the handle is gone: no error


def _calibration_around(model, question, answer, **overrides):
    """A calibration whose anchors sit one nat either side of what the model makes of ``answer``."""
    (m,) = L.measure_replies(model, [(question, answer)], (None,))
    anchors = dict(
        fluent_nll=m.nll - 1.0, nonsense_nll=m.nll + 1.0, relevant_gain=m.gain + 1.0, irrelevant_gain=m.gain - 1.0
    )
    return L.CoherenceCalibration(model.cfg.model_name, (None,), **{**anchors, **overrides}), m


def test_scores_are_the_minimum_of_rule_fluency_and_relevance():
    model = load_cached("tiny-llama")
    calibration, m = _calibration_around(model, Q, PLAIN)
    judge = L.LikelihoodCoherenceJudge(model, calibration)
    (parts,) = judge.explain([(Q, PLAIN)])
    assert parts["rule"] == pytest.approx(100.0)
    assert parts["fluency"] == pytest.approx(50.0) and parts["relevance"] == pytest.approx(50.0)
    assert parts["nll"] == pytest.approx(m.nll) and judge.score(COHERENCE_RUBRIC, [(Q, PLAIN)]) == [parts["score"]]
    fluent = L.CoherenceCalibration(**{**vars(calibration), "fluent_nll": m.nll + 0.5, "nonsense_nll": m.nll + 2})
    (parts,) = L.LikelihoodCoherenceJudge(model, fluent).explain([(Q, PLAIN)])
    assert parts["fluency"] == 100.0 and parts["score"] == pytest.approx(50.0)  # now relevance decides


def test_the_rule_prefilter_stops_broken_replies_before_the_model(monkeypatch):
    model = load_cached("tiny-qwen2")
    judge = L.LikelihoodCoherenceJudge(model, _calibration_around(model, Q, PLAIN)[0])
    loop = "the sea the sea the sea the sea the sea the sea the sea the sea the sea the sea"
    monkeypatch.setattr(L, "response_nlls", lambda *a, **k: pytest.fail("a pre-filtered reply reached the model"))
    parts = judge.explain([(Q, ""), (Q, loop)])
    assert [p["score"] for p in parts] == [0.0, pytest.approx(L.score_coherence(Q, loop))]
    assert all(p["fluency"] is None for p in parts)


def test_judge_id_carries_version_and_calibration_and_caches_per_calibration(tmp_path):
    model = load_cached("tiny-gemma2")
    calibration, _ = _calibration_around(model, Q, PLAIN)
    judge = L.LikelihoodCoherenceJudge(model, calibration)
    assert f"@v{L.JUDGE_VERSION}" in judge.judge_id and calibration.fingerprint() in judge.judge_id
    other = L.LikelihoodCoherenceJudge(
        model, L.CoherenceCalibration(**{**vars(calibration), "fluent_nll": calibration.fluent_nll - 0.1})
    )
    assert other.judge_id != judge.judge_id
    cached = CachedJudge(judge, tmp_path / "c.sqlite")
    first = cached.score(COHERENCE_RUBRIC, [(Q, PLAIN)])
    assert cached.score(COHERENCE_RUBRIC, [(Q, PLAIN)]) == first and cached.stats.hits == 1
    recached = CachedJudge(other, tmp_path / "c.sqlite")
    recached.score(COHERENCE_RUBRIC, [(Q, PLAIN)])
    assert recached.stats.misses == 1  # another calibration: scored again, not served the old score


def test_refuses_trait_rubrics_other_models_and_anchors_that_do_not_separate():
    model = load_cached("tiny-llama")
    calibration, _ = _calibration_around(model, Q, PLAIN)
    judge = L.LikelihoodCoherenceJudge(model, calibration)
    with pytest.raises(ValueError, match="coherence only"):
        judge.score(load_trait("pirate").rubric, [(Q, PLAIN)])
    with pytest.raises(ValueError, match="recalibrate"):
        L.LikelihoodCoherenceJudge(load_cached("tiny-qwen2"), calibration)
    flat = L.CoherenceCalibration(**{**vars(calibration), "nonsense_nll": calibration.fluent_nll})
    with pytest.raises(ValueError, match="--coherence rule"):
        L.LikelihoodCoherenceJudge(model, flat)


def test_calibration_runs_saves_and_is_reused(tmp_path, monkeypatch):
    model = load_cached("tiny-llama")
    questions = ["What is your favourite food?", "Where do you live?", "What pets do you like?"]
    path = tmp_path / "cal.json"
    try:
        calibration = L.calibration_for(
            model, questions, (None, "Talk like a pirate."), path, max_new_tokens=8, prefilter=0.0
        )
    except ValueError as error:  # a random model may not tell its replies from shuffled words: said clearly
        assert "cannot" in str(error) or "meaningless" in str(error)
        return
    assert path.exists() and L.load_calibration(path) == calibration
    assert calibration.settings["n_generated"] == 6 and len(calibration.own_nll) == calibration.settings["n_kept"]
    assert all(
        math.isfinite(x)
        for x in (
            calibration.fluent_nll,
            calibration.nonsense_nll,
            calibration.relevant_gain,
            calibration.irrelevant_gain,
        )
    )
    monkeypatch.setattr(L, "calibrate_coherence", lambda *a, **k: pytest.fail("a saved calibration was redone"))
    assert (
        L.calibration_for(model, questions, (None, "Talk like a pirate."), path, max_new_tokens=8, prefilter=0.0)
        == calibration
    )


# ------------------------------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.fixture(scope="module")
def smollm2_judge():
    model = load_cached("smollm2-135m-instruct")
    trait = load_trait("pirate")
    questions = list(trait.eval_questions[:10])
    calibration = L.calibrate_coherence(model, questions, (None, trait.prompt_pairs[0].positive), max_new_tokens=32)
    print({k: getattr(calibration, k) for k in ("fluent_nll", "nonsense_nll", "relevant_gain", "irrelevant_gain")})
    return L.LikelihoodCoherenceJudge(model, calibration)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What do you like to eat for lunch?", "Barn ye blue horse lamp fish sky, o' the truck dig merry nor."),
        ("What is your favourite food?", "Yes! Carrot moon fish table run blue."),
        ("What do you like to eat for lunch?", "The capital of France is Paris, which is famous for the Eiffel Tower."),
    ],
)
def test_fluent_nonsense_and_off_topic_answers_fail_on_smollm2(smollm2_judge, question, answer):
    """Issue 13: the first two scored coherence 100 under the rule."""
    (parts,) = smollm2_judge.explain([(question, answer)])
    print(parts)
    assert parts["rule"] >= 75  # the rule alone is fooled ...
    assert parts["score"] < 50  # ... the likelihood judge is not


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What do you like to eat for lunch?", PLAIN),
        (
            "What do you like to eat for lunch?",
            "Arr, matey! I be eatin' a hearty bowl o' fish stew for me lunch, with a mug o' grog!",
        ),
        (
            "How do you make tea?",
            "I boil some water, pour it over a tea bag in a cup, wait a few minutes and add milk.",
        ),
    ],
)
def test_genuine_answers_pass_on_smollm2(smollm2_judge, question, answer):
    (parts,) = smollm2_judge.explain([(question, answer)])
    print(parts)
    assert parts["score"] >= 75
