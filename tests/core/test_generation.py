"""Batched generation: cached == uncached == one-by-one == transformers' generate; steering; sampling."""

import pytest
import torch

import persona_lens.core.hooks as H
from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.generation import generate, stop_token_ids

CONVERSATIONS = [
    make_messages("What is the capital of France?"),
    make_messages("Name three colours, please, and say why you like each of them.", system="Be cheerful."),
    make_messages("Hi"),
]


def _hf_generate(model, conversation, max_new_tokens):
    ids = torch.tensor([encode_prompt(model.tokenizer, conversation)])
    with torch.no_grad():
        out = model.hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    stops = stop_token_ids(model)
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    return new[:cut]


def test_greedy_is_identical_cached_uncached_batched_and_alone(any_model):
    cached = generate(any_model, CONVERSATIONS, max_new_tokens=12)
    uncached = generate(any_model, CONVERSATIONS, max_new_tokens=12, use_cache=False)
    alone = [generate(any_model, [c], max_new_tokens=12).response_ids[0] for c in CONVERSATIONS]
    small_batches = generate(any_model, CONVERSATIONS, max_new_tokens=12, batch_size=2)
    assert cached.response_ids == uncached.response_ids == alone == small_batches.response_ids


def test_greedy_equals_transformers_generate(any_model):
    ours = generate(any_model, CONVERSATIONS, max_new_tokens=12)
    for conversation, response in zip(CONVERSATIONS, ours.response_ids):
        assert response == _hf_generate(any_model, conversation, 12)


@pytest.mark.slow
def test_smollm2_answers_and_stops_at_end_of_turn(smollm2):
    out = generate(smollm2, [CONVERSATIONS[0]], max_new_tokens=30)
    assert out.texts[0] == "The capital of France is Paris."
    assert out.stopped == [True]
    assert not set(out.response_ids[0]) & stop_token_ids(smollm2)


def test_steering_changes_the_output(tiny_model):
    clean = generate(tiny_model, CONVERSATIONS, max_new_tokens=8)
    v = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    with H.steer(tiny_model, v * 10, layer=2, coef=1.0, raw=True, positions="all"):
        steered = generate(tiny_model, CONVERSATIONS, max_new_tokens=8)
    assert steered.response_ids != clean.response_ids
    assert generate(tiny_model, CONVERSATIONS, max_new_tokens=8).response_ids == clean.response_ids


def test_sampling_is_seeded_and_independent_of_batching(tiny_model):
    a = generate(tiny_model, CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=5)
    b = generate(tiny_model, CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=5, batch_size=1)
    c = generate(tiny_model, CONVERSATIONS, max_new_tokens=8, temperature=1.0, seed=6)
    greedy = generate(tiny_model, CONVERSATIONS, max_new_tokens=8)
    assert a.response_ids == b.response_ids
    assert a.response_ids != c.response_ids
    assert a.response_ids != greedy.response_ids


def test_top_p_near_zero_is_greedy(tiny_model):
    nucleus = generate(tiny_model, CONVERSATIONS, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=1)
    greedy = generate(tiny_model, CONVERSATIONS, max_new_tokens=8)
    assert nucleus.response_ids == greedy.response_ids


def test_prompt_token_ids_are_accepted(tiny_model):
    ids = encode_prompt(tiny_model.tokenizer, CONVERSATIONS[0])
    assert (
        generate(tiny_model, [ids], max_new_tokens=5).response_ids
        == generate(tiny_model, [CONVERSATIONS[0]], max_new_tokens=5).response_ids
    )


def test_bad_arguments(tiny_model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, CONVERSATIONS, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny_model, CONVERSATIONS, top_p=0.0)
    with pytest.raises(TypeError, match="HookedLM"):
        generate(tiny_model.to_bridge(), CONVERSATIONS)


def test_progress_bar_shows_each_decoding_step(capsys):
    """A slow batch must not leave the bar silent: its postfix names the batch and the token being decoded."""
    from tests.conftest import load_cached

    model = load_cached("tiny-llama")
    generate(
        model,
        [[{"role": "user", "content": "Hi"}]] * 3,
        max_new_tokens=8,
        batch_size=2,
        progress=True,
        stop_at_eos=False,
    )
    err = capsys.readouterr().err
    assert "batch 1/2, token 4/8" in err and "batch 2/2, token 8/8" in err
