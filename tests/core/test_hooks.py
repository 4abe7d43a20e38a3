"""Steering, ablation, capping and recording hooks: maths, positions (with and without KV cache), handles."""

import functools

import pytest
import torch

import persona_lens.core.hooks as H
from persona_lens.core.generation import generate
from persona_lens.core.layers import hook_name
from persona_lens.core.protocols import TransformerLensModel
from tests.conftest import load_cached

PROMPTS = [
    [{"role": "user", "content": "Tell me a story about a cat."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


def _direction(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)


def _record_around(model, layer, unit, install_between):
    """Record the projection onto ``unit`` just before and just after the hooks ``install_between`` adds."""
    name = hook_name(layer, model.cfg.n_layers)
    before, after = H.RecordProjection(unit), H.RecordProjection(unit)
    handles = [H.install_hooks(model, [(name, before)])]
    handles.append(install_between())
    handles.append(H.install_hooks(model, [(name, after)]))
    return before, after, handles


# ------------------------------------------------------------------------------------------------ maths
def test_add_vector_adds_coef_times_v():
    resid = torch.randn(2, 3, 8)
    v = torch.randn(8)
    out = H.AddVector(v, 2.5)(resid.clone())
    torch.testing.assert_close(out, resid + 2.5 * v)


def test_per_row_coefficients():
    resid = torch.randn(3, 2, 8)
    v = torch.randn(8)
    out = H.AddVector(v, torch.tensor([0.0, 1.0, -2.0]))(resid.clone())
    torch.testing.assert_close(out, resid + torch.tensor([0.0, 1.0, -2.0])[:, None, None] * v)
    with pytest.raises(ValueError, match="per-row coefficients"):
        H.AddVector(v, torch.tensor([1.0, 2.0]))(resid)


def test_ablation_removes_the_direction_and_nothing_else():
    resid = torch.randn(2, 5, 16)
    v = torch.randn(16)
    u = v / v.norm()
    out = H.AblateDirection(v)(resid.clone())
    assert (out @ u).abs().max() < 1e-5
    orthogonal = resid - (resid @ u)[..., None] * u
    torch.testing.assert_close(out, orthogonal)


def test_cap_clamps_the_projection():
    resid = torch.randn(4, 6, 16) * 5
    v = torch.randn(16)
    u = v / v.norm()
    out = H.CapProjection(v, min_value=-1.0, max_value=0.5)(resid.clone())
    torch.testing.assert_close(out @ u, (resid @ u).clamp(-1.0, 0.5))
    torch.testing.assert_close(out - (out @ u)[..., None] * u, resid - (resid @ u)[..., None] * u)
    with pytest.raises(ValueError):
        H.CapProjection(v)
    with pytest.raises(ValueError, match="empty"):
        H.CapProjection(v, min_value=1.0, max_value=0.0)


def test_zero_direction_is_refused():
    with pytest.raises(ValueError, match="zero vector"):
        H.AblateDirection(torch.zeros(4))


# -------------------------------------------------------------------------------------------- positions
def test_position_masks_from_a_layout():
    layout = H.TokenLayout(pad_lengths=torch.tensor([0, 2]), prompt_lengths=torch.tensor([4, 2]))
    with H.token_layout(layout):
        prompt = H.position_mask("prompt", 2, 4, torch.device("cpu"))
        response = H.position_mask("response", 2, 4, torch.device("cpu"))
        window = H.position_mask(H.Window(0, 1, "prompt_end"), 2, 4, torch.device("cpu"))
    assert prompt.tolist() == [[True, True, True, True], [False, False, True, True]]
    assert response.tolist() == [[False, False, False, True], [False, False, False, True]]
    assert window.tolist() == [[False] * 4, [False] * 4]
    layout.past_length = 4  # a decoding step: the new token is position 4 (row 0) and 2 (row 1)
    with H.token_layout(layout):
        response = H.position_mask("response", 2, 1, torch.device("cpu"))
        prompt = H.position_mask("prompt", 2, 1, torch.device("cpu"))
        window = H.position_mask(H.Window(0, 1, "prompt_end"), 2, 1, torch.device("cpu"))
    assert response.tolist() == [[True], [True]] and prompt.tolist() == [[False], [False]]
    assert window.tolist() == [[True], [True]]


def test_without_a_layout_response_means_the_last_position():
    mask = H.position_mask("response", 1, 5, torch.device("cpu"))
    assert mask.tolist() == [[False, False, False, False, True]]


def test_unknown_positions_are_refused():
    with pytest.raises(ValueError, match="unknown positions"):
        H.AddVector(torch.ones(4), 1.0, positions="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("positions", ["all", "prompt", "response", H.Window(2, 5), H.Window(-2, 3, "prompt_end")])
def test_each_position_mode_touches_exactly_its_positions_with_and_without_cache(tiny_model, positions):
    model = tiny_model
    layer = 2
    v = _direction(model)[layer]
    u = v / v.norm()
    prompt_lengths = []
    touched = {}
    outputs = {}
    for use_cache in (True, False):
        before, after, handles = _record_around(
            model, layer, u, lambda: H.steer(model, v, layer=layer, coef=3.0, raw=True, positions=positions)
        )
        try:
            gen = generate(model, PROMPTS, max_new_tokens=6, use_cache=use_cache)
        finally:
            for h in handles:
                h.remove()
        delta = after.projections() - before.projections()
        touched[use_cache] = (delta - 3.0 * v.norm()).abs() < 1e-3
        untouched = delta.abs() < 1e-4
        assert bool((touched[use_cache] | untouched | delta.isnan()).all())
        outputs[use_cache] = gen.response_ids
        prompt_lengths = [len(p) for p in gen.prompt_ids]
    assert torch.equal(touched[True], touched[False])
    assert outputs[True] == outputs[False]
    # expected absolute positions per row (rows are in input order: row 0 is the longer prompt)
    for row, plen in enumerate(prompt_lengths):
        total = plen + 6
        expected = torch.zeros(touched[True].shape[1], dtype=torch.bool)
        if positions == "all":
            expected[:total] = True
        elif positions == "prompt":
            expected[:plen] = True
        elif positions == "response":
            expected[plen - 1 : total] = True
        elif positions.relative_to == "start":
            expected[positions.start : positions.stop] = True
        else:
            expected[plen + positions.start : plen + positions.stop] = True
        # a row is recorded only up to the last token that was fed back into the model
        fed = total - 1
        expected[fed:] = False
        got = touched[True][row].clone()
        got[fed:] = False
        assert got.tolist() == expected.tolist(), (row, positions)


# ---------------------------------------------------------------------------------------------- handles
def test_context_manager_removes_hooks_even_on_exceptions(tiny_model):
    v = _direction(tiny_model)
    with pytest.raises(RuntimeError):
        with H.steer(tiny_model, v, layer=2, coef=1.0, raw=True, positions="all") as handle:
            assert handle.active
            raise RuntimeError("boom")
    assert not handle.active
    assert not any(p._forward_hooks for p in tiny_model.hook_dict.values())


def test_handle_remove(tiny_model):
    handle = H.steer(tiny_model, _direction(tiny_model), layer=[1, 3], coef=1.0, raw=True, positions="all")
    assert tiny_model.hook_dict["blocks.0.hook_resid_post"]._forward_hooks
    assert tiny_model.hook_dict["blocks.2.hook_resid_post"]._forward_hooks
    handle.remove()
    handle.remove()  # idempotent
    assert not any(p._forward_hooks for p in tiny_model.hook_dict.values())
    assert "removed" in repr(handle)


@torch.no_grad()
def test_steering_changes_logits_and_composes_with_user_hooks(tiny_model):
    v = _direction(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = tiny_model(ids)
    seen = []
    with H.steer(tiny_model, v, layer=1, coef=4.0, raw=True, positions="all"):
        with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.clone()))]):
            steered = tiny_model(ids)
    assert not torch.allclose(clean, steered)
    # the user's hook was added after ours, so it sees the steered residual
    _, cache = tiny_model.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    torch.testing.assert_close(seen[0], cache["blocks.0.hook_resid_post"] + 4.0 * v[1])


def test_incremental_vectors_sum_to_the_layer_vector(tiny_model):
    v = _direction(tiny_model)
    with H.steer(tiny_model, v, layer="all", coef=1.0, raw=True, incremental=True) as handle:
        increments = torch.stack([fn.vector for fn in handle.fns])
    assert len(handle.hooks) == tiny_model.cfg.n_layers
    torch.testing.assert_close(increments.cumsum(0) + v[0], v[1:])


def test_vector_of_another_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="d_model"):
        H.steer(tiny_model, torch.randn(tiny_model.cfg.n_layers + 1, 7), layer=1, coef=1.0, raw=True)
    with pytest.raises(ValueError, match="layer rows"):
        H.steer(tiny_model, torch.randn(3, tiny_model.cfg.d_model), layer=1, coef=1.0, raw=True)
    with pytest.raises(ValueError, match="out of range"):
        H.steer(tiny_model, _direction(tiny_model), layer=99, coef=1.0, raw=True)
    with pytest.raises(ValueError, match="one layer"):
        H.steer(tiny_model, torch.randn(tiny_model.cfg.d_model), layer=[1, 2], coef=1.0, raw=True)


def test_record_handle_reads_projections(tiny_model):
    v = _direction(tiny_model)
    with H.record(tiny_model, v, layer=2) as recording:
        with torch.no_grad():
            tiny_model(torch.tensor([[5, 6, 7]]))
    projections = recording.projections()
    assert projections.shape == (1, 3) and not projections.isnan().any()
    assert isinstance(recording, H.RecordingHandle) and not recording.active
    assert torch.equal(projections, recording.fns[0].projections())
    recording.clear()
    assert recording.projections().numel() == 0


def test_same_hooks_run_on_a_transformer_bridge(tiny_model):
    """Plain TL hook functions: the steering shift on a TransformerBridge equals the one on HookedLM."""
    bridge = tiny_model.to_bridge()
    v = _direction(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours_clean, bridge_clean = tiny_model(ids), bridge(ids)
        with H.steer(tiny_model, v, layer=2, coef=2.0, raw=True, positions="response"):
            ours = tiny_model(ids)
        with H.steer(bridge, v, layer=2, coef=2.0, raw=True, positions="response"):
            theirs = bridge(ids)
    torch.testing.assert_close(ours - ours_clean, theirs - bridge_clean, rtol=1e-3, atol=1e-3)
    assert not any(p._forward_hooks for p in bridge.hook_dict.values())


def test_hooks_need_a_transformer_lens_model():
    with pytest.raises(ValueError, match="no hook point"):
        H.install_hooks(torch.nn.Linear(2, 2), [("blocks.0.hook_resid_post", lambda x, hook: x)])
    for install in (H.ablate, H.record, functools.partial(H.steer, coef=1.0)):
        with pytest.raises(ValueError, match="no hook point"):
            install(torch.nn.Linear(2, 2), torch.ones(2), layer=1)


def test_transformer_lens_models_satisfy_the_protocol(tiny_model):
    assert isinstance(tiny_model, TransformerLensModel)
    assert isinstance(tiny_model.to_bridge(), TransformerLensModel)
    assert not isinstance(torch.nn.Linear(2, 2), TransformerLensModel)


def test_per_conversation_coefficients_follow_sorting_in_generate():
    model = load_cached("tiny-llama")
    v = _direction(model)
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1]]  # generate sorts by length, so rows move
    coefs = torch.tensor([0.0, 2.0, 4.0])
    with H.steer(model, v, layer=2, coef=coefs, raw=True, positions="all"):
        together = generate(model, prompts, max_new_tokens=5)
    for i, prompt in enumerate(prompts):
        with H.steer(model, v, layer=2, coef=float(coefs[i]), raw=True, positions="all"):
            alone = generate(model, [prompt], max_new_tokens=5)
        assert together.response_ids[i] == alone.response_ids[0]


def test_same_hooks_run_on_a_transformer_lens_model_built_from_config():
    """The TL-native model (what replaced HookedTransformer) takes our hooks by their standard names."""
    from transformer_lens.model_bridge import TransformerBridge

    native = TransformerBridge.boot_native(
        {
            "n_layers": 2,
            "d_model": 32,
            "n_heads": 4,
            "d_head": 8,
            "d_mlp": 64,
            "d_vocab": 50,
            "n_ctx": 64,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
        }
    )
    v = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        _, clean = native.run_with_cache(ids, names_filter="blocks.1.hook_resid_post")
        with H.steer(native, v, layer=2, coef=2.0, raw=True, positions="response"):
            _, steered = native.run_with_cache(ids, names_filter="blocks.1.hook_resid_post")
    delta = steered["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"]
    torch.testing.assert_close(delta[0, -1], 2.0 * v[2])
    assert delta[0, :-1].abs().max() == 0
    assert not any(p._forward_hooks for p in native.hook_dict.values())


# ------------------------------------------------------------------------------- relative coefficients
@torch.no_grad()
def test_relative_coefficient_adds_that_fraction_of_the_residual_norm(tiny_model):
    """coef=0.5 (relative, the default units) adds a vector whose norm is half the layer's median residual norm."""
    layer = 2
    v = _direction(tiny_model)
    norms = torch.linspace(1.0, 3.0, tiny_model.cfg.n_layers + 1)
    ids = torch.tensor([[5, 6, 7, 8]])
    name = hook_name(layer, tiny_model.cfg.n_layers)
    _, clean = tiny_model.run_with_cache(ids, names_filter=name)
    with H.steer(tiny_model, v, layer=layer, coef=0.5, residual_norms=norms) as handle:
        _, steered = tiny_model.run_with_cache(ids, names_filter=name)
    delta = steered[name] - clean[name]
    assert float(delta[0, -1].norm()) == pytest.approx(0.5 * float(norms[layer]), rel=1e-4)
    assert float(handle.fns[0].coef) == pytest.approx(0.5 * float(norms[layer] / v[layer].norm()), rel=1e-6)
    assert delta[0, :-1].abs().max() == 0  # default positions: "response" = the last position of a plain forward


def test_relative_coefficients_default_to_the_reference_prompts_norms(tiny_model):
    from persona_lens.core.norms import median_residual_norms

    v = _direction(tiny_model)
    norms = median_residual_norms(tiny_model)
    with H.steer(tiny_model, v, layer=[1, 3], coef=torch.tensor([0.0, 0.3])) as handle:
        coefs = [fn.coef for fn in handle.fns]
    for coef, layer in zip(coefs, [1, 3]):
        torch.testing.assert_close(coef, torch.tensor([0.0, 0.3]) * norms[layer] / v[layer].norm())


def test_raw_and_relative_agree_through_the_one_conversion(tiny_model):
    from persona_lens.core.norms import raw_coefficient, relative_coefficient

    v = _direction(tiny_model)
    norms = torch.full((tiny_model.cfg.n_layers + 1,), 2.0)
    with H.steer(tiny_model, v, layer=2, coef=0.4, residual_norms=norms) as relative:
        raw_value = relative.fns[0].coef
    assert raw_value == pytest.approx(float(raw_coefficient(0.4, v[2].norm(), 2.0)))
    assert relative_coefficient(raw_value, v[2].norm(), 2.0) == pytest.approx(0.4)
    with H.steer(tiny_model, v, layer=2, coef=raw_value, raw=True) as raw:
        assert raw.fns[0].coef == raw_value and raw.fns[0].positions == "response"


def test_relative_coefficients_refuse_what_has_no_relative_size(tiny_model):
    v = _direction(tiny_model)
    with pytest.raises(ValueError, match="raw=True"):
        H.steer(tiny_model, v, layer="all", coef=0.5, incremental=True)
    zero = torch.zeros_like(v)
    with pytest.raises(ValueError, match="zero"):
        H.steer(tiny_model, zero, layer=2, coef=0.5, residual_norms=torch.ones(tiny_model.cfg.n_layers + 1))
    with pytest.raises(ValueError, match="one median norm per layer"):
        H.steer(tiny_model, v, layer=2, coef=0.5, residual_norms=torch.ones(3))
    assert not any(p._forward_hooks for p in tiny_model.hook_dict.values())


def test_default_positions_of_the_installers_are_response(tiny_model):
    v = _direction(tiny_model)
    with (
        H.steer(tiny_model, v, layer=1, coef=1.0, raw=True) as s,
        H.ablate(tiny_model, v, layer=1) as a,
        H.cap(tiny_model, v, layer=1, max_value=0.0) as c,
    ):
        assert [h.fns[0].positions for h in (s, a, c)] == ["response"] * 3


def test_recording_formats_tokens_with_their_projections(tiny_model):
    v = _direction(tiny_model)
    with H.record(tiny_model, v, layer=2) as recording:
        out = generate(tiny_model, PROMPTS[:1], max_new_tokens=4, stop_at_eos=False)
    ids = out.prompt_ids[0] + out.response_ids[0]
    start = len(out.prompt_ids[0]) - 2
    rows = recording.token_projections(tiny_model.tokenizer, ids, start=start)
    projections = recording.projections()[0]
    assert [r[0] for r in rows] == list(range(start, len(ids)))
    assert [r[1] for r in rows] == [tiny_model.tokenizer.decode([t]) for t in ids[start:]]
    for position, _, value in rows[:-1]:
        assert value == pytest.approx(float(projections[position]))
    assert rows[-1][2] != rows[-1][2]  # the last generated token was never fed back: NaN, shown as n/a
    table = recording.format_tokens(tiny_model.tokenizer, ids, start=start).splitlines()
    assert len(table) == 1 + len(rows) and "n/a" in table[-1]
    assert repr(rows[0][1]) in table[1] and f"{rows[0][2]:.3f}" in table[1]


def test_the_steering_bound_is_where_the_normalisation_overflows():
    """The instrument behind :func:`check_steering_size`: just past :data:`MAX_ADDED_NORM` the residual's squares
    overflow float32 in RMSNorm and tiny-llama's logits are all equal (standard deviation exactly 0: every next
    token uniform); at 1/100 of it they still vary. The check refuses the first and accepts the second (a float or
    one coefficient per row); ``sweep --coefficients 1e30`` used to exit 0 with such replies, scored."""
    from persona_lens.core.validate import BadValue

    model = load_cached("tiny-llama")
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    size = H.MAX_ADDED_NORM / float(direction.norm())
    for coef, varies in ((size / 100, True), (size * 1.01, False)):
        with H.steer(model, direction, layer=2, coef=coef, raw=True, positions="all"):
            assert (float(model(ids).float().std()) > 0) is varies
    H.check_steering_size(size / 100, direction)
    for coef in (size * 1.01, torch.tensor([1.0, -size * 1.01])):
        with pytest.raises(BadValue, match="overflow float32"):
            H.check_steering_size(coef, direction)
