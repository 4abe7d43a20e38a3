"""contrast_vector: a persona vector from the user's own contrast examples, against an independent computation."""

import pytest
import torch

import persona_lens
from persona_lens.core.activations import contrast_vector, encode_contrast_item
from persona_lens.core.chat import encode_conversation
from persona_lens.core.layers import hook_name

POSITIVE_CHATS = [
    [
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Arr, fine as a sea breeze, matey!"},
    ],
    [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ahoy there!"},
    ],
    [{"role": "user", "content": "What is for dinner?"}, {"role": "assistant", "content": "Grog and hardtack, aye."}],
]
NEGATIVE_CHATS = [
    [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "I am well, thank you."}],
    [{"role": "user", "content": "What is for dinner?"}, {"role": "assistant", "content": "Pasta with tomatoes."}],
]


@torch.no_grad()
def _independent(model, items, reduce):
    """run_with_cache on each example alone, reduce its tokens at every layer, then average the examples."""
    n_layers = model.cfg.n_layers
    per_item = []
    for ids, select in items:
        _, cache = model.run_with_cache(torch.tensor([ids]))
        per_item.append(
            torch.stack([reduce(cache[hook_name(lay, n_layers)][0], select) for lay in range(n_layers + 1)])
        )
    return torch.stack(per_item).mean(0)


def _chat_tokens(model, chats):
    out = []
    for chat in chats:
        encoded = encode_conversation(model.tokenizer, chat[:-1], chat[-1]["content"])
        out.append((list(encoded.input_ids), (encoded.prompt_length, encoded.response_start, encoded.response_end)))
    return out


@pytest.mark.parametrize("positions", ["response", "prompt", "last_prompt"])
def test_chat_contrast_is_the_mean_difference_over_the_chosen_tokens(tiny_model, positions):
    reduce = {
        "response": lambda resid, s: resid[s[1] : s[2]].mean(0),
        "prompt": lambda resid, s: resid[: s[0]].mean(0),
        "last_prompt": lambda resid, s: resid[s[0] - 1],
    }[positions]
    expected = _independent(tiny_model, _chat_tokens(tiny_model, POSITIVE_CHATS), reduce) - _independent(
        tiny_model, _chat_tokens(tiny_model, NEGATIVE_CHATS), reduce
    )
    vector = contrast_vector(
        tiny_model, POSITIVE_CHATS, NEGATIVE_CHATS, trait="pirate", positions=positions, batch_size=2
    )
    assert vector.vectors.shape == (tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model)
    torch.testing.assert_close(vector.vectors, expected, rtol=1e-4, atol=1e-4)
    assert (vector.trait, vector.positions, vector.n_positive, vector.n_negative) == ("pirate", positions, 3, 2)
    assert vector.model_name == tiny_model.cfg.model_name


def test_plain_texts_average_every_token_but_a_leading_bos(tiny_model):
    positive, negative = ["Arr, ye scallywag!", "Shiver me timbers."], ["Good morning.", "Thank you kindly."]
    tokenizer = tiny_model.tokenizer

    def tokens(texts):
        out = []
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            start = 1 if ids[0] == tokenizer.bos_token_id else 0
            out.append((ids, start))
        return out

    def reduce(resid, start):
        return resid[start:].mean(0)

    expected = _independent(tiny_model, tokens(positive), reduce) - _independent(tiny_model, tokens(negative), reduce)
    vector = persona_lens.contrast_vector(tiny_model, positive, negative)
    torch.testing.assert_close(vector.vectors, expected, rtol=1e-4, atol=1e-4)


def test_contrast_inputs_are_checked(tiny_model):
    with pytest.raises(ValueError, match="both sides"):
        contrast_vector(tiny_model, ["a"], [])
    with pytest.raises(ValueError, match="wrap a single text"):
        contrast_vector(tiny_model, "pirate", ["plain"])
    with pytest.raises(ValueError, match="needs a prompt"):
        contrast_vector(tiny_model, ["Arr"], ["Hello"], positions="last_prompt")
    with pytest.raises(ValueError, match="ending with the assistant"):
        encode_contrast_item(tiny_model.tokenizer, [{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="unknown positions"):
        contrast_vector(tiny_model, ["a"], ["b"], positions="middle")


@pytest.mark.slow
def test_contrast_vector_separates_held_out_replies_on_smollm2(smollm2):
    """Real model: held-out pirate replies project higher than held-out plain replies on the contrast vector."""
    from persona_lens.core.activations import collect_activations

    vector = contrast_vector(smollm2, POSITIVE_CHATS, NEGATIVE_CHATS, trait="pirate")
    question = [{"role": "user", "content": "Where are you going today?"}]
    held_out = [
        [*question, {"role": "assistant", "content": text}]
        for text in (
            "Arr, to the sea, me hearty! Hoist the sails!",
            "Yo ho ho, to find buried treasure, matey!",
            "I am going to the library to return a book.",
            "To the office; I have a meeting at ten.",
        )
    ]
    acts = collect_activations(
        smollm2,
        [encode_contrast_item(smollm2.tokenizer, c) for c in held_out],
        reductions=("response",),
        progress=False,
    ).get("response")
    for layer in (10, 20):
        projection = acts[:, layer] @ vector.unit(layer)
        assert float(projection[:2].min()) > float(projection[2:].max()), (layer, projection.tolist())
