"""Compiled static-cache decoding: same replies as eager decoding, hooks traced without graph breaks, and hook
changes recompile instead of silently keeping stale hooks."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import persona_lens.core.hooks as H
from persona_lens.core.chat import make_messages
from persona_lens.core.generation import generate
from tests.conftest import load_cached

CONVERSATIONS = [
    make_messages("What is the capital of France?"),
    make_messages("Hi"),
]
# Each traced graph costs seconds of CPU (dynamo), so the quick loop (-m "not slow") compiles one case: tiny-llama
# steered at every position; every other architecture, position mode, recompile and the inductor run in the full suite.
SLOW = pytest.mark.slow
# tiny-gemma2 has sliding-window layers: refused (tested below)
COMPILABLE = ["tiny-llama", pytest.param("tiny-qwen2", marks=SLOW)]
POSITIONS = [
    pytest.param(p, marks=() if p == "all" else SLOW)
    for p in ("response", "prompt", "all", H.Window(2, 5, relative_to="prompt_end"), H.Window(3, 9))
]


@pytest.fixture(params=COMPILABLE)
def model(request):
    return load_cached(request.param)


def _vector(model, scale=8.0):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * scale


def _replies(model, compile, **kwargs):
    return generate(model, CONVERSATIONS, max_new_tokens=8, stop_at_eos=False, compile=compile, **kwargs).response_ids


@pytest.mark.parametrize("positions", POSITIONS, ids=str)
def test_compiled_steering_equals_eager(model, positions):
    counter = CompileCounterWithBackend("eager")
    plain = _replies(model, False)
    assert _replies(model, counter) == plain
    coefs = torch.tensor([3.0, -4.0])  # per-conversation coefficients, looked up inside the graph
    with H.steer(model, _vector(model), layer=2, coef=coefs, raw=True, positions=positions):
        eager = _replies(model, False)
        compiled = _replies(model, counter)
    assert compiled == eager
    assert eager != plain or positions == "prompt"  # prompt-only steering may leave a short reply unchanged


@SLOW
def test_hook_changes_recompile_and_old_graphs_are_reused(model):
    counter = CompileCounterWithBackend("eager")
    plain = _replies(model, counter)
    assert counter.frame_count == 1  # one graph: the decoding step traced whole
    with H.steer(model, _vector(model), layer=1, coef=4.0, raw=True, positions="response"):
        steered = _replies(model, counter)
        assert steered == _replies(model, False) != plain
        assert counter.frame_count == 2  # installing a hook recompiled, still one graph
        _replies(model, counter)
        assert counter.frame_count == 2  # and the next call reuses it
    assert _replies(model, counter) == plain  # removed hooks are not kept by a stale graph
    after_removal = counter.frame_count  # (at most one more graph: the block stays wired to its hook point)
    assert after_removal <= 3
    assert _replies(model, counter) == plain and counter.frame_count == after_removal
    with (
        H.ablate(model, _vector(model), layer=2, positions="all"),
        H.cap(model, _vector(model), layer=3, max_value=0.1, positions="all"),
    ):
        assert _replies(model, counter) == _replies(model, False)
        assert counter.frame_count == after_removal + 1


@SLOW
def test_recording_under_compile_matches_eager(model):
    vector = _vector(model)
    projections = []
    for compile in (False, CompileCounterWithBackend("eager")):
        with H.record(model, vector, layer=2, positions="all") as recording:
            _replies(model, compile)
            projections.append(recording.projections())
    torch.testing.assert_close(projections[0], projections[1], equal_nan=True)
    assert not projections[0].isnan().all()


@SLOW
def test_inductor_compiled_steering_equals_eager():
    model = load_cached("tiny-llama")
    with H.steer(model, _vector(model), layer=2, coef=3.0, raw=True, positions="response"):
        assert _replies(model, True) == _replies(model, False)


def test_compile_needs_the_cache(model):
    with pytest.raises(ValueError, match="static KV cache"):
        generate(model, CONVERSATIONS, max_new_tokens=2, compile=True, use_cache=False)


def test_sliding_window_models_are_refused_clearly():
    with pytest.raises(ValueError, match="sliding_attention layers.*compile=False"):
        generate(load_cached("tiny-gemma2"), CONVERSATIONS, max_new_tokens=2, compile="eager")
