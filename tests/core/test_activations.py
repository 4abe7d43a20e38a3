"""Layer-wise activation collection: exact against a manual computation, batch-invariant, fp32, no autograd."""

import pytest
import torch

import persona_lens
from persona_lens.core.activations import collect_activations, reduce_batch
from persona_lens.core.chat import collate, encode_conversation, make_messages
from persona_lens.core.layers import hook_name
from tests.conftest import TINY, load_cached

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Why is the sky blue? Explain briefly please."]
ANSWERS = ["Paris.", "Blue is a fine colour, I think.", "Because of Rayleigh scattering of sunlight."]


def _conversations(model):
    return [
        encode_conversation(model.tokenizer, make_messages(q, system="Be brief."), a)
        for q, a in zip(QUESTIONS, ANSWERS)
    ]


@torch.no_grad()
def _manual(model, conv):
    n_layers = model.cfg.n_layers
    names = [hook_name(layer, n_layers) for layer in range(n_layers + 1)]
    _, cache = model.run_with_cache(torch.tensor([conv.input_ids]), names_filter=lambda n: n in names)
    stack = torch.stack([cache[n][0] for n in names])  # [layer, pos, d]
    return (
        stack[:, conv.response_start : conv.response_end].mean(1),
        stack[:, : conv.prompt_length].mean(1),
        stack[:, conv.prompt_length - 1],
    )


def test_matches_a_manual_computation_from_the_cache(any_model):
    convs = _conversations(any_model)
    acts = collect_activations(any_model, convs, batch_size=3, progress=False)
    for i, conv in enumerate(convs):
        response, prompt, last = _manual(any_model, conv)
        torch.testing.assert_close(acts.response_mean[i], response, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(acts.prompt_mean[i], prompt, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(acts.last_prompt[i], last, rtol=1e-4, atol=1e-4)
    assert acts.n_response_tokens.tolist() == [c.response_end - c.response_start for c in convs]


def test_independent_of_batch_size_and_padding(tiny_model):
    convs = _conversations(tiny_model) * 2
    one = collect_activations(tiny_model, convs, batch_size=1, progress=False)
    many = collect_activations(tiny_model, convs, batch_size=4, progress=False)
    for positions in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(one.get(positions), many.get(positions), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_float32_and_no_autograd_whatever_the_model_dtype(name):
    # a fresh model: casting the shared cached one to bf16 and back would round its weights for later tests
    model = persona_lens.load_model(name, dtype=torch.bfloat16)
    convs = _conversations(model)
    for p in model.parameters():
        p.requires_grad_(True)
    acts = collect_activations(model, convs, reductions=("response",), progress=False)
    assert acts.response_mean.dtype == torch.float32
    assert not acts.response_mean.requires_grad
    assert acts.prompt_mean is None
    with pytest.raises(ValueError, match="not collected"):
        acts.get("prompt")


def test_only_requested_layers_are_filled(tiny_model):
    convs = _conversations(tiny_model)
    batch = collate(convs, tiny_model.tokenizer.pad_token_id)
    out = reduce_batch(tiny_model, batch, ("response",), layers=[2])
    rows = out["response"]
    assert rows[:, 2].abs().sum() > 0
    assert rows[:, [0, 1, 3, 4]].abs().sum() == 0


def test_unknown_reduction_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown reductions"):
        collect_activations(tiny_model, _conversations(tiny_model), reductions=("mean",), progress=False)


def _native_model():
    """A TransformerLens model built from config (the TL-native replacement of HookedTransformer)."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 4,
        "d_head": 8,
        "d_mlp": 64,
        "d_vocab": 300,
        "n_ctx": 512,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "seed": 0,
    }
    return TransformerBridge.boot_native(cfg)


def test_works_on_a_transformer_lens_model_built_from_config():
    """Our activation code only uses TL hook points, so it runs on HookedTransformer-style models too."""
    native = _native_model()
    convs = _conversations(load_cached("tiny-llama"))  # token ids < 300 fit the native model's vocabulary
    acts = collect_activations(native, convs, progress=False)
    names = [hook_name(layer, 2) for layer in range(3)]
    for i, conv in enumerate(convs):
        _, cache = native.run_with_cache(torch.tensor([conv.input_ids]), names_filter=names)
        manual = torch.stack([cache[n][0, conv.response_start : conv.response_end].mean(0) for n in names])
        torch.testing.assert_close(acts.response_mean[i], manual, rtol=1e-5, atol=1e-5)
