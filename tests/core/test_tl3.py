"""TransformerLens 3.x: hooks, positions, recordings and activation reading on a config-built ``HookedTransformer``.

TransformerLens 4 removed ``HookedTransformer``, so these tests run in the TL 3.x environment that
``scripts/setup_tl3.sh`` builds (``pytest -m tl3``); in the main (TL 4.x) environment pytest reports them skipped.
The runner matrix is that of ``tests/core/test_runners.py``: ``HookedTransformer.generate`` with its own KV cache
and without it, plain forwards and ``run_with_cache``, each position mode, against an uncached recomputation.
"""

from __future__ import annotations

import pytest
import torch
import transformer_lens  # noqa: E402

try:  # TransformerLens 4 raises ImportError for the removed name
    transformer_lens.HookedTransformer  # noqa: B018
except (ImportError, AttributeError):
    pytest.skip(
        "TransformerLens 3.x only (HookedTransformer): scripts/setup_tl3.sh runs these", allow_module_level=True
    )

import persona_lens.core.hooks as H  # noqa: E402
from persona_lens.core.activations import collect_activations  # noqa: E402
from persona_lens.core.chat import EncodedConversation  # noqa: E402
from persona_lens.core.layers import hook_name  # noqa: E402
from persona_lens.core.runners import UnreadablePositions  # noqa: E402
from persona_lens.core.vectors import PersonaVector  # noqa: E402
from tests.core.test_runners import POSITIONS, check_against_recompute  # noqa: E402

pytestmark = pytest.mark.tl3

LAYER = 2
NEW = 5
_MODEL: list = []


def hooked_transformer():
    """A random 3-layer Llama-like HookedTransformer built from a config (no download), made once.

    Rotary positions: with learned absolute position embeddings and no tokenizer, TL 3.9's own cached
    ``generate`` places each new token at ``cache length + sequence length - 1`` (``get_residual`` adds the cache
    offset to the whole sequence before keeping its last column), so its residuals differ from a full forward with
    no persona_lens hook installed at all; rotary positions are applied from the cache length and are exact.
    """
    if not _MODEL:
        cfg = transformer_lens.HookedTransformerConfig(
            n_layers=3,
            d_model=32,
            n_ctx=64,
            d_head=8,
            n_heads=4,
            d_mlp=64,
            d_vocab=60,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            seed=0,
        )
        _MODEL.append(transformer_lens.HookedTransformer(cfg).eval())
    return _MODEL[0]


def _direction(model, seed=1):
    return torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _install(model, v, positions):
    before = H.record(model, v, layer=LAYER)
    steering = H.steer(model, v, layer=LAYER, coef=3.0, positions=positions, raw=True)
    after = H.RecordingHandle(model, hook_name(LAYER, model.cfg.n_layers), H.RecordProjection(v[LAYER]))
    return before, after, [before, steering, after]


PROMPT = torch.tensor([[1, 7, 3, 9, 4, 12, 5]])


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
@pytest.mark.parametrize("runner", ["generate-cached", "generate-uncached", "forward", "run_with_cache"])
def test_hooked_transformer_runners_match_an_uncached_recomputation(runner, positions):
    model = hooked_transformer()
    v = _direction(model)
    before, after, handles = _install(model, v, positions)
    try:
        with torch.no_grad():
            if runner.startswith("generate"):
                tokens = model.generate(
                    PROMPT,
                    max_new_tokens=NEW,
                    do_sample=False,
                    stop_at_eos=False,
                    use_past_kv_cache=runner == "generate-cached",
                    verbose=False,
                )
                prompt_length = PROMPT.shape[1]
            else:
                tokens = torch.cat([PROMPT, torch.tensor([[20, 21]])], dim=1)
                prompt_length = tokens.shape[1] - 1
                if runner == "forward":
                    model(tokens[:, :-1])
                else:
                    model.run_with_cache(tokens[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
    if runner.startswith("generate"):
        assert tokens.shape[1] == PROMPT.shape[1] + NEW
    check_against_recompute(model, v, positions, tokens, prompt_length, before.projections(), after.projections())
    assert not any(point._forward_hooks for point in model.hook_dict.values())
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__  # the reader is gone


def test_cached_and_uncached_generate_agree_under_prompt_only_steering():
    """The reported failure: positions='prompt' steered every generated token, a Window steered nothing."""
    model = hooked_transformer()
    v = _direction(model)
    replies = {}
    for cache in (True, False):
        with H.steer(model, v, layer=LAYER, coef=3.0, positions="prompt", raw=True), torch.no_grad():
            replies[cache] = model.generate(
                PROMPT, max_new_tokens=NEW, do_sample=False, stop_at_eos=False, use_past_kv_cache=cache, verbose=False
            ).tolist()
    assert replies[True] == replies[False]


def test_a_cached_forward_whose_prompt_was_not_seen_raises():
    model = hooked_transformer()
    cache = transformer_lens.TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with torch.no_grad():
        model(PROMPT, past_kv_cache=cache, attention_mask=torch.ones_like(PROMPT))  # no persona_lens hook yet
        mask = torch.ones(1, 1, dtype=torch.long)  # TL 3.x: the new tokens' mask (the cache keeps the rest)
        with H.steer(model, _direction(model), layer=LAYER, positions="response", coef=1.0, raw=True):
            with pytest.raises(UnreadablePositions, match="did not see"):
                model(torch.tensor([[8]]), past_kv_cache=cache, attention_mask=mask)


def test_activations_and_vectors_on_a_hooked_transformer():
    """collect_activations reads a HookedTransformer; a vector made from them steers it through steer()."""
    model = hooked_transformer()
    convs = [
        EncodedConversation(input_ids=(1, 5, 6, 7, 8, 9), prompt_length=3, response_start=3, response_end=6),
        EncodedConversation(input_ids=(1, 10, 11, 12, 13), prompt_length=2, response_start=2, response_end=5),
    ]
    acts = collect_activations(model, convs, progress=False)
    names = [hook_name(layer, model.cfg.n_layers) for layer in range(model.cfg.n_layers + 1)]
    for i, conv in enumerate(convs):
        _, cache = model.run_with_cache(torch.tensor([conv.input_ids]), names_filter=names)
        manual = torch.stack([cache[n][0, conv.response_start : conv.response_end].mean(0) for n in names])
        torch.testing.assert_close(acts.response_mean[i], manual, rtol=1e-5, atol=1e-5)
    vector = PersonaVector(trait="t", model_name="config-built", vectors=acts.response_mean[0] - acts.response_mean[1])
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        clean = model(ids)
        with H.steer(model, vector, layer=LAYER, coef=2.0, raw=True, positions="all"):
            steered = model(ids)
    assert not torch.allclose(clean, steered)
