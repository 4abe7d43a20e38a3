"""LocalJudge: exact P(reply is n) for n in 0..100, checked against brute force on real (tiny and small) models."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from persona_lens import load_model
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.tiny import build_tiny
from persona_lens.judges.base import Judge
from persona_lens.judges.cache import CachedJudge, DetailedJudge
from persona_lens.judges.local import LocalJudge, build_number_vocab, score_from_probs

RUBRIC = "Rate the answer from 0 to 100.\nQuestion: {question}\nAnswer: {answer}\nScore:"
SHORT_RUBRIC = "{question} {answer} Score:"  # brute force runs ~110 full forwards: keep its prompt short
ITEMS = [
    ("What is 2+2?", "4"),
    ("Say hi", "hello there, friend"),
    ("Name a colour", "blue"),
    ("Count to three", "one two three four five six seven"),
]
EXTRA_TOKENS = ["42", "10", "100", " 42", "7.", "3 ", "00", " 5"]  # whole-number and mixed tokens


def tiny_with_number_tokens(name: str) -> HookedLM:
    """A tiny random model whose byte-level vocabulary also has multi-digit and digit+other tokens."""
    hf_model, tokenizer = build_tiny(name)
    tokenizer.add_tokens(EXTRA_TOKENS)
    old = hf_model.get_input_embeddings().weight.shape[0]
    hf_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        weight = hf_model.get_input_embeddings().weight
        weight[old:] = torch.randn(weight.shape[0] - old, weight.shape[1], generator=generator) * weight[:old].std()
        if hf_model.get_output_embeddings().weight is not weight:
            hf_model.get_output_embeddings().weight[old:] = weight[old:]
    return HookedLM(hf_model.eval(), tokenizer, model_name=name)


def token_texts(model: HookedLM) -> list[str]:
    vocab = model.hf_model.get_output_embeddings().weight.shape[0]
    return [model.tokenizer.decode([i]) if i < len(model.tokenizer) else "" for i in range(vocab)]


@torch.no_grad()
def brute_force_probs(model: HookedLM, prompt: list[int]) -> dict[int, float]:
    """P(reply starts with n, then a non-digit), by walking every token path with plain full forwards (no cache,
    no batching), reading each path's text directly."""
    texts = token_texts(model)
    canonical = {str(n) for n in range(101)}
    probs: dict[int, float] = defaultdict(float)

    def next_token_probs(path: list[int]) -> list[float]:
        logits = model.hf_model(input_ids=torch.tensor([prompt + path])).logits[0, -1]
        return logits.double().softmax(-1).tolist()

    def walk(path: list[int], digits: str, p: float) -> None:
        dist = next_token_probs(path)
        for token, text in enumerate(texts):
            if not path:
                text = text.lstrip(" ")
                if not text:
                    continue  # a reply of only spaces is not a number
            if not text:
                if digits in canonical:
                    probs[int(digits)] += p * dist[token]
                continue
            joined = digits + text
            run = len(joined) - len(joined.lstrip("0123456789"))
            if run == len(joined):
                if any(c.startswith(joined) for c in canonical):
                    walk(path + [token], joined, p * dist[token])
            elif joined[:run] in canonical:
                probs[int(joined[:run])] += p * dist[token]

    walk([], "", 1.0)
    return dict(probs)


@pytest.fixture(scope="module")
def tiny_number_models() -> dict[str, HookedLM]:
    return {name: tiny_with_number_tokens(name) for name in ("tiny-llama", "tiny-qwen2", "tiny-gemma2")}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma2"])
def test_probabilities_match_brute_force(tiny_number_models, name):
    model = tiny_number_models[name]
    judge = LocalJudge(model, min_numeric_mass=0.0, batch_size=3)
    probs = judge.number_probs(SHORT_RUBRIC, ITEMS[:2])  # the first prompt is the shorter: it is left-padded
    assert probs.shape == (2, 101) and probs.dtype == torch.float64
    expected = torch.zeros(101, dtype=torch.float64)
    for number, p in brute_force_probs(model, judge.prompt_ids(SHORT_RUBRIC, *ITEMS[0])).items():
        expected[number] = p
    torch.testing.assert_close(probs[0], expected, rtol=2e-4, atol=1e-12)
    assert (expected > 0).sum() == 101  # every number is reachable: the comparison covers all of them
    score, mass = score_from_probs(expected, 0.0)
    assert judge.score_detailed(SHORT_RUBRIC, ITEMS[:1])[0].score == pytest.approx(score, rel=1e-4)
    assert 0 < mass < 1


def test_multi_token_readings_are_summed(tiny_number_models):
    model = tiny_number_models["tiny-llama"]
    vocab = build_number_vocab(model.tokenizer, model.hf_model.get_output_embeddings().weight.shape[0])
    tok = model.tokenizer
    ids = {text: tok.convert_tokens_to_ids(text) for text in EXTRA_TOKENS}
    byte = {d: tok(d, add_special_tokens=False).input_ids[0] for d in "0123456789"}
    assert (ids["42"], "42") in vocab.children[""] and (ids[" 42"], "42") in vocab.children[""]
    assert (byte["4"], "4") in vocab.children[""] and (byte["2"], "42") in vocab.children["4"]
    assert (ids["00"], "100") in vocab.children["1"] and (ids["100"], "100") in vocab.children[""]
    assert (ids["7."], 7) in vocab.finals[""] and (ids["7."], 17) in vocab.finals["1"]
    assert (ids["3 "], 3) in vocab.finals[""] and (ids["3 "], 73) in vocab.finals["7"]
    assert not vocab.children["100"] and (ids["00"], "1000") not in vocab.children["10"]
    assert all(state != "05" for state, _ in vocab.children.items())
    assert not vocab.digit_start[ids[" 5"]] and vocab.digit_start[ids["42"]]


def test_batching_and_padding_do_not_change_results():
    model = load_model("tiny-llama", device="cpu")
    items = ITEMS[:2] + [("A much longer question that pads every other prompt in the batch " * 3, "ok")]
    one_by_one = LocalJudge(model, batch_size=1, min_numeric_mass=0.0).number_probs(RUBRIC, items)
    batched = LocalJudge(model, batch_size=8, min_numeric_mass=0.0).number_probs(RUBRIC, items)
    # a small budget splits every level's continuations into several forwards
    small_chunks = LocalJudge(model, batch_size=2, min_numeric_mass=0.0, token_budget=2000).number_probs(RUBRIC, items)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(small_chunks, one_by_one, rtol=1e-4, atol=1e-12)


def test_low_numeric_mass_gives_none_with_a_reason():
    model = load_model("tiny-llama", device="cpu")  # random weights: digits get little probability
    judge = LocalJudge(model)
    assert isinstance(judge, Judge) and isinstance(judge, DetailedJudge)
    assert judge.judge_id == "local:tiny-llama"
    verdicts = judge.score_detailed(RUBRIC, ITEMS[:2])
    assert all(v.score is None and "numeric probability mass" in v.reason and v.cacheable for v in verdicts)
    assert LocalJudge(model, min_numeric_mass=0.0).judge_id == "local:tiny-llama?min_mass=0"
    scores = LocalJudge(model, min_numeric_mass=0.0).score(RUBRIC, ITEMS[:2])
    assert all(s is not None and 0 <= s <= 100 for s in scores)


def test_score_from_probs():
    probs = torch.zeros(101, dtype=torch.float64)
    probs[20], probs[80] = 0.3, 0.1
    score, mass = score_from_probs(probs, 0.25)
    assert mass == pytest.approx(0.4) and score == pytest.approx((20 * 0.3 + 80 * 0.1) / 0.4)
    assert score_from_probs(probs, 0.5) == (None, pytest.approx(0.4))
    assert score_from_probs(torch.zeros(101, dtype=torch.float64), 0.0)[0] is None


def test_cached_local_judge(tmp_path):
    model = load_model("tiny-llama", device="cpu")
    cached = CachedJudge(LocalJudge(model, min_numeric_mass=0.0), tmp_path / "local.sqlite")
    first = cached.score(RUBRIC, ITEMS[:2])
    assert cached.score(RUBRIC, ITEMS[:2]) == first
    assert (cached.stats.hits, cached.stats.misses) == (2, 2)


@pytest.mark.slow
def test_smollm2_probabilities_are_exact_and_sensible():
    model = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    judge = LocalJudge(model)
    assert judge.judge_id == "local:smollm2-135m-instruct"
    item = ("What is 12 + 30? Reply with only the number.", "")
    rubric = "{question}{answer}"
    probs = judge.number_probs(rubric, [item])[0]
    mass = float(probs.sum())
    assert 0.25 < mass <= 1.0
    score = judge.score(rubric, [item])[0]
    assert score is not None and score == pytest.approx(float((probs * torch.arange(101)).sum()) / mass)

    # SmolLM2 writes numbers digit by digit; check the top numbers and 100 with one plain forward each.
    texts = token_texts(model)
    digit_start = torch.tensor([bool(t) and t[0] in "0123456789" for t in texts])
    assert int(digit_start.sum()) == 10  # exactly one token per digit: one tokenization per number
    prompt = judge.prompt_ids(rubric, *item)
    for number in [*probs.topk(3).indices.tolist(), 100]:
        digits = model.tokenizer(str(number), add_special_tokens=False).input_ids
        assert len(digits) == len(str(number))
        with torch.no_grad():
            logp = model.hf_model(input_ids=torch.tensor([prompt + digits])).logits[0].double().log_softmax(-1)
        start = len(prompt) - 1
        path = sum(logp[start + k, token].item() for k, token in enumerate(digits))
        end = logp[start + len(digits)].masked_fill(digit_start, -math.inf).logsumexp(-1).item()
        assert probs[number].item() == pytest.approx(math.exp(path + end), rel=1e-4)
