"""Positions and recordings are exact in every runner, or loud: runner x position mode x record.

Each run installs a recorder before the steering hook, the steering hook, and a recorder after it (all on one layer),
runs a runner, and compares both recordings with an uncached recomputation: the same tokens (prompt + reply, less
the last token, which no runner feeds back) through one plain forward with the same hooks, inside a published
``token_layout`` that says where the prompt ends. The "after" recording also carries every earlier position's
steering through attention, so a single misplaced column anywhere shows up.

Runners installed with TransformerLens 4 (the main environment): persona_lens ``generate`` (KV cache on/off; the
compiled decoder equals it, position mode by position mode, in ``tests/core/test_compiled.py``), HF ``generate``
on the wrapped model (cache on/off), ``TransformerBridge.generate`` (cache on/off), plain forwards and
``run_with_cache``. TransformerLens 3.x's ``HookedTransformer.generate`` runs in the TL 3.x environment
(``tests/core/test_tl3.py``, ``scripts/setup_tl3.sh``).
"""

from __future__ import annotations

import pytest
import torch

import persona_lens.core.hooks as H
from persona_lens.core.generation import generate
from persona_lens.core.layers import hook_name
from persona_lens.core.runners import UnreadablePositions
from tests.conftest import load_cached

POSITIONS = ["all", "prompt", "response", H.Window(2, 5), H.Window(-2, 3, "prompt_end")]
LAYER = 2
NEW = 5


def _direction(model, seed=1):
    return torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _install(model, v, positions, coef=3.0):
    """recorder, steering, recorder (in that order) at LAYER; returns (before, after, handles)."""
    name = hook_name(LAYER, model.cfg.n_layers)
    before = H.record(model, v, layer=LAYER)
    steering = H.steer(model, v, layer=LAYER, coef=coef, positions=positions, raw=True)
    after = H.RecordingHandle(model, name, H.RecordProjection(v[LAYER]))
    return before, after, [before, steering, after]


def recompute(model, v, positions, tokens, prompt_length):
    """The reference: the fed tokens through one uncached forward, with the prompt's end published."""
    before, after, handles = _install(model, v, positions)
    layout = H.TokenLayout(torch.zeros(1, dtype=torch.long), torch.tensor([prompt_length]))
    try:
        with H.token_layout(layout), torch.no_grad():
            model(tokens[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
    return before.projections(), after.projections()


def check_against_recompute(model, v, positions, tokens, prompt_length, before, after):
    ref_before, ref_after = recompute(model, v, positions, tokens, prompt_length)
    assert before.shape == ref_before.shape == (1, tokens.shape[1] - 1), (before.shape, ref_before.shape)
    assert not before.isnan().any() and not after.isnan().any()
    torch.testing.assert_close(before, ref_before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, ref_after, rtol=1e-4, atol=1e-4)
    assert (after - before).abs().max() > 1e-2  # the steering acted somewhere: the comparison is not vacuous


def _prompt(model):
    return model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about cats."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


def _run(runner, model, bridge, ids):
    """Run ``runner``; returns the tokens it ran (prompt + reply)."""
    with torch.no_grad():
        if runner.startswith("ours"):
            gen = generate(
                model, [ids[0].tolist()], max_new_tokens=NEW, stop_at_eos=False, use_cache=runner == "ours-cached"
            )
            return torch.tensor([gen.prompt_ids[0] + gen.response_ids[0]])
        if runner.startswith("hf"):
            return model.hf_model.generate(
                ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, use_cache=runner == "hf-cached"
            )
        if runner.startswith("bridge"):
            return bridge.generate(
                ids,
                max_new_tokens=NEW,
                do_sample=False,
                stop_at_eos=False,
                use_past_kv_cache=runner == "bridge-cached",
                verbose=False,
            )
    raise AssertionError(runner)


_BRIDGES: dict[str, object] = {}


def _bridge(name, model):
    if name not in _BRIDGES:
        _BRIDGES[name] = model.to_bridge()
    return _BRIDGES[name]


GENERATORS = ["ours-cached", "ours-uncached", "hf-cached", "hf-uncached", "bridge-cached", "bridge-uncached"]


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
@pytest.mark.parametrize("runner", GENERATORS)
def test_generate_runners_match_an_uncached_recomputation(runner, positions):
    model = load_cached("tiny-llama")
    bridge = _bridge("tiny-llama", model)
    hooked = bridge if runner.startswith("bridge") else model
    v = _direction(model)
    ids = _prompt(model)
    before, after, handles = _install(hooked, v, positions)
    try:
        tokens = _run(runner, model, bridge, ids)
    finally:
        for handle in handles:
            handle.remove()
    assert tokens.shape[1] == ids.shape[1] + NEW
    check_against_recompute(hooked, v, positions, tokens, ids.shape[1], before.projections(), after.projections())


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
@pytest.mark.parametrize("runner", ["forward", "run_with_cache", "bridge-forward", "bridge-run_with_cache"])
def test_plain_forwards_are_one_prompt(runner, positions):
    """A plain forward is a prompt: exactly what the published-layout recomputation of the same tokens gives."""
    model = load_cached("tiny-llama")
    hooked = _bridge("tiny-llama", model) if runner.startswith("bridge") else model
    v = _direction(model)
    tokens = torch.cat([_prompt(model), torch.tensor([[70, 71]])], dim=1)  # run tokens[:, :-1]
    before, after, handles = _install(hooked, v, positions)
    try:
        with torch.no_grad():
            if runner.endswith("run_with_cache"):
                hooked.run_with_cache(tokens[:, :-1], names_filter=hook_name(LAYER, model.cfg.n_layers))
            else:
                hooked(tokens[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
    check_against_recompute(
        hooked, v, positions, tokens, tokens.shape[1] - 1, before.projections(), after.projections()
    )


def test_hf_generate_on_a_left_padded_batch_matches_each_row_alone():
    """HF generate on two prompts of different lengths (left padding, attention mask): each row's recordings are
    those of the row alone, keyed by its own absolute positions."""
    model = load_cached("tiny-llama")
    v = _direction(model)
    short, long = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * 3 + short, long])
    mask = torch.tensor([[0] * 3 + [1] * 4, [1] * 7])
    positions = H.Window(-1, 2, "prompt_end")
    before, after, handles = _install(model, v, positions)
    try:
        with torch.no_grad():
            out = model.hf_model.generate(
                ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=pad
            )
    finally:
        for handle in handles:
            handle.remove()
    for row, prompt in enumerate([short, long]):
        reply = out[row, ids.shape[1] :]
        tokens = torch.cat([torch.tensor(prompt), reply])[None]
        ref_before, ref_after = recompute(model, v, positions, tokens, len(prompt))
        width = tokens.shape[1] - 1
        torch.testing.assert_close(before.projections()[row, :width], ref_before[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(after.projections()[row, :width], ref_after[0], rtol=1e-4, atol=1e-4)


def test_a_manual_cached_loop_is_followed():
    """The user's own loop: model(prompt, use_cache=True), then one token at a time with the returned cache."""
    model = load_cached("tiny-llama")
    v = _direction(model)
    ids = _prompt(model)
    positions = H.Window(0, 2, "prompt_end")
    before, after, handles = _install(model, v, positions)
    try:
        with torch.no_grad():
            logits, cache = model(ids, use_cache=True)
            tokens = ids
            for _ in range(3):
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
                logits, cache = model(nxt, torch.ones_like(tokens), cache=cache, use_cache=True)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        for handle in handles:
            handle.remove()
    check_against_recompute(model, v, positions, tokens, ids.shape[1], before.projections(), after.projections())


# ------------------------------------------------------------------------------------------------- loud
def test_a_cached_forward_whose_prompt_was_not_seen_raises_where_the_prompt_matters():
    model = load_cached("tiny-llama")
    v = _direction(model)
    ids = _prompt(model)
    with torch.no_grad():
        _, cache = model(ids, use_cache=True)  # the prompt ran before any persona_lens hook was installed
    nxt = torch.tensor([[70]])
    mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
    with H.steer(model, v, layer=LAYER, coef=1.0, positions="response", raw=True), torch.no_grad():
        with pytest.raises(UnreadablePositions, match="did not see.*positions='all'"):
            model(nxt, mask, cache=cache, use_cache=True)
    # absolute positions are still known from the cache: recording and 'all' work, at the right column
    with torch.no_grad():
        _, cache = model(ids, use_cache=True)
    with H.record(model, v, layer=LAYER) as recording, torch.no_grad():
        model(nxt, mask, cache=cache, use_cache=True)
    projections = recording.projections()
    assert projections.shape == (1, ids.shape[1] + 1)
    assert projections[0, :-1].isnan().all() and not projections[0, -1].isnan()


class _Unreadable(torch.nn.Module):
    """A TransformerLens-style model persona_lens does not know how to read (hook points, a cfg, its own loop)."""

    def __init__(self):
        from transformer_lens import HookedRootModule
        from transformer_lens.hook_points import HookPoint

        class Model(HookedRootModule):
            def __init__(self):
                super().__init__()
                self.cfg = type("Cfg", (), {"n_layers": 1, "d_model": 4})()
                self.embed = torch.nn.Embedding(10, 4)
                self.blocks = torch.nn.ModuleList([torch.nn.Module()])
                self.blocks[0].hook_resid_post = HookPoint()
                self.setup()

            def forward(self, tokens):
                return self.blocks[0].hook_resid_post(self.embed(tokens))

        super().__init__()
        self.model = Model()


def test_a_runner_that_cannot_be_read_raises():
    model = _Unreadable().model
    v = torch.ones(2, 4)
    with H.record(model, v, layer=1), pytest.raises(UnreadablePositions, match="token_layout"):
        model(torch.tensor([[1, 2, 3]]))
    with (
        H.steer(model, v, layer=1, positions="prompt", coef=1.0, raw=True),
        pytest.raises(UnreadablePositions, match="positions='all'"),
    ):
        model(torch.tensor([[1, 2, 3]]))
    with H.steer(model, v, layer=1, positions="all", coef=1.0, raw=True):  # needs no positions
        out = model(torch.tensor([[1, 2, 3]]))
    assert torch.allclose(out, model.embed(torch.tensor([[1, 2, 3]])) + 1)
    layout = H.TokenLayout(torch.zeros(1, dtype=torch.long), torch.tensor([2]))  # the fix: publish the layout
    with H.record(model, v, layer=1) as recording, H.token_layout(layout):
        model(torch.tensor([[1, 2, 3]]))
    assert recording.projections().shape == (1, 3)


def test_a_hook_added_by_hand_raises_instead_of_guessing():
    """RecordProjection added with TransformerLens' own ``hooks()`` has no reader: it says how to install it."""
    model = load_cached("tiny-llama")
    recorder = H.RecordProjection(_direction(model)[LAYER])
    with model.hooks(fwd_hooks=[(hook_name(LAYER, model.cfg.n_layers), recorder)]), torch.no_grad():
        with pytest.raises(UnreadablePositions, match="persona_lens.steer / ablate / cap / record"):
            model(torch.tensor([[5, 6, 7]]))


def test_readers_are_removed_with_the_last_hook():
    model = load_cached("tiny-llama")
    decoder = model.hf_model.get_decoder()
    v = _direction(model)
    first = H.record(model, v, layer=1)
    second = H.steer(model, v, layer=2, positions="prompt", coef=1.0, raw=True)
    assert "forward" in decoder.__dict__ and "generate" in model.hf_model.__dict__
    first.remove()
    assert "forward" in decoder.__dict__
    second.remove()
    assert "forward" not in decoder.__dict__ and "generate" not in model.hf_model.__dict__
    with H.steer(model, v, layer=2, positions="all", coef=1.0, raw=True):  # position-free steering reads nothing
        assert "forward" not in decoder.__dict__


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["hf-cached", "bridge-cached", "bridge-uncached"])
def test_runners_on_smollm2(runner, smollm2):
    """The external runners on a real model, at the prompt's end (our runner and uncached HF generate passed here
    too, 126 s and 251 s on a loaded 2-core machine: the tiny matrix covers them)."""
    bridge = _bridge("smollm2", smollm2) if runner.startswith("bridge") else None
    hooked = bridge if bridge is not None else smollm2
    v = _direction(smollm2) * 0.1
    ids = _prompt(smollm2)
    for positions in (H.Window(-1, 2, "prompt_end"),):
        before, after, handles = _install(hooked, v, positions)
        try:
            tokens = _run(runner, smollm2, bridge, ids)
        finally:
            for handle in handles:
                handle.remove()
        ref_before, ref_after = recompute(hooked, v, positions, tokens, ids.shape[1])
        torch.testing.assert_close(before.projections(), ref_before, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(after.projections(), ref_after, rtol=1e-3, atol=1e-3)
