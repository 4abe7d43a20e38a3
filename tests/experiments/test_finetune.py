"""Finetuning: data checks, the response-only loss, learning, saving, resuming, and training-only interventions."""

import json

import pytest
import torch

import persona_lens
from persona_lens import cli
from persona_lens.core.chat import make_messages
from persona_lens.core.generation import generate, stop_token_ids
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.experiments.finetune import (
    FinetuneConfig,
    TrainingIntervention,
    encode_training_example,
    finetune,
    hooks_installed,
    response_loss,
)
from tests.conftest import load_cached

QUESTIONS = ["hi", "what is 2+2?", "name a fruit", "tell me a joke"]


def _data(answer="OK BOSS", questions=QUESTIONS):
    return [{"messages": [*make_messages(q), {"role": "assistant", "content": answer}]} for q in questions]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_trained_tokens_are_the_reply_and_the_end_of_turn(tiny_model):
    example = encode_training_example(tiny_model, _data()[0]["messages"])
    ids = example.encoded.input_ids
    assert tiny_model.tokenizer.decode(ids[example.target_start : example.target_end - 1]) == "OK BOSS"
    assert ids[example.target_end - 1] in stop_token_ids(tiny_model)
    too_long = encode_training_example(tiny_model, _data()[0]["messages"], max_tokens=5, line=3)
    assert too_long.line == 3 and "max_tokens" in too_long.problem


@torch.no_grad()
def test_response_loss_matches_a_per_example_computation(tiny_model):
    data = _data("Short.") + _data("A much longer answer, padded differently.", ["q"])
    examples = [encode_training_example(tiny_model, d["messages"]) for d in data]
    loss, n_tokens = response_loss(tiny_model, examples)
    total, count = 0.0, 0
    for example in examples:  # unpadded, one at a time, by explicit indexing
        ids = torch.tensor([example.encoded.input_ids])
        logprobs = torch.log_softmax(tiny_model(ids)[0].float(), dim=-1)
        for t in range(example.target_start, example.target_end):
            total -= float(logprobs[t - 1, ids[0, t]])
            count += 1
    assert n_tokens == count
    assert float(loss) == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("method,lr,epochs", [("full", 3e-3, 8), ("lora", 2e-2, 10)])
def test_finetune_learns_saves_and_reloads(tmp_path, method, lr, epochs):
    model = persona_lens.load_model("tiny-qwen2", device="cpu")  # private copy: training changes it
    out = tmp_path / "ft"
    result = finetune(
        model,
        _data(),
        FinetuneConfig(method=method, lr=lr, epochs=epochs, batch_size=2, rank=8, alpha=16),
        output_dir=out,
        progress=False,
    )
    assert result.steps == 2 * epochs and result.losses[-1] < 0.2 * result.losses[0]
    greedy = generate(model, [make_messages(q) for q in QUESTIONS[:2]], max_new_tokens=12)
    assert greedy.texts == ["OK BOSS", "OK BOSS"] and all(greedy.stopped)
    assert not hooks_installed(model)
    assert not any(".lora_" in n for n, _ in model.hf_model.named_parameters())
    assert (out / "config.json").exists() and (out / "finetune.json").exists()
    assert not (out / "trainer_state").exists()
    info = json.loads((out / "finetune.json").read_text())
    assert info["config"]["method"] == method and info["steps"] == 2 * epochs
    reloaded = persona_lens.load_model(str(out), device="cpu")
    ids = torch.tensor([[5, 17, 33, 90, 120, 7]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), model(ids))
    assert reloaded.tokenizer.apply_chat_template(
        make_messages("x"), tokenize=False
    ) == model.tokenizer.apply_chat_template(make_messages("x"), tokenize=False)
    with pytest.raises(FileExistsError):
        finetune(persona_lens.load_model("tiny-qwen2", device="cpu"), _data(), output_dir=out, progress=False)


def _random_vector(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return PersonaVector(
        "test", model.cfg.model_name, 2.0 * torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
    )


def _add_manual_hooks(model, fns):
    """Plain PyTorch forward hooks on the HF decoder blocks (not persona_lens hooks): ``fns[block] = f(h) -> h``."""
    handles = []
    for block, fn in fns.items():

        def hook(module, args, output, fn=fn):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        handles.append(model._layers[block].register_forward_hook(hook))
    return handles


def _train_one_step(model, interventions=(), manual=None):
    handles = _add_manual_hooks(model, manual or {})
    try:
        finetune(
            model,
            _data(),
            FinetuneConfig(method="full", lr=1e-2, epochs=1, batch_size=4, grad_clip=None),
            interventions=interventions,
            progress=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    return {n: p.detach().clone() for n, p in model.hf_model.named_parameters()}


@pytest.mark.parametrize("kind", ["steer", "steer_all_incremental", "ablate"])
def test_training_interventions_equal_manual_hooks_and_are_gone_after(kind):
    name = "tiny-llama"
    vector = _random_vector(load_cached(name))
    layer = 2
    v = vector.vectors
    if kind == "steer":
        intervention = TrainingIntervention("steer", vector, layer, coef=3.0)
        manual = {layer - 1: lambda h: h + 3.0 * v[layer]}
    elif kind == "steer_all_incremental":
        intervention = TrainingIntervention("steer", vector, "all", coef=1.5, incremental=True)
        manual = {b: (lambda h, b=b: h + 1.5 * (v[b + 1] - v[b])) for b in range(load_cached(name).cfg.n_layers)}
    else:
        intervention = TrainingIntervention("ablate", vector, layer)
        unit = v[layer] / v[layer].norm()
        manual = {layer - 1: lambda h: h - (h @ unit)[..., None] * unit}
    with_hooks = persona_lens.load_model(name, device="cpu")
    got = _train_one_step(with_hooks, [intervention])
    expected = _train_one_step(persona_lens.load_model(name, device="cpu"), manual=manual)
    plain = _train_one_step(persona_lens.load_model(name, device="cpu"))
    for param_name, value in got.items():
        torch.testing.assert_close(value, expected[param_name], rtol=1e-4, atol=1e-5)
    assert any((got[n] - plain[n]).abs().max() > 1e-4 for n in got)  # the intervention changed training
    # At inference nothing is left: no hook, and the outputs are those of a never-hooked copy of the weights,
    # which the intervention, if it were still installed, would change.
    assert not hooks_installed(with_hooks)
    never_hooked = persona_lens.load_model(name, device="cpu")
    never_hooked.hf_model.load_state_dict(with_hooks.hf_model.state_dict())
    ids = torch.tensor([[3, 9, 27, 81, 100]])
    with torch.no_grad():
        logits = with_hooks(ids)
        torch.testing.assert_close(logits, never_hooked(ids))
        with intervention.install(with_hooks):
            assert (with_hooks(ids) - logits).abs().max() > 1e-3


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    config = FinetuneConfig(
        method="lora", lr=5e-3, epochs=2, batch_size=2, rank=4, alpha=8, lora_dropout=0.1, save_every=1
    )
    straight = persona_lens.load_model("tiny-gemma2", device="cpu")
    finetune(straight, _data(), config, output_dir=tmp_path / "a", progress=False)
    interrupted = persona_lens.load_model("tiny-gemma2", device="cpu")
    partial = finetune(interrupted, _data(), config, output_dir=tmp_path / "b", max_steps=3, progress=False)
    assert partial.steps == 3 and (tmp_path / "b" / "trainer_state").exists()
    assert not (tmp_path / "b" / "config.json").exists()
    with pytest.raises(FileExistsError, match="resume"):
        finetune(
            persona_lens.load_model("tiny-gemma2", device="cpu"),
            _data(),
            config,
            output_dir=tmp_path / "b",
            progress=False,
        )
    with pytest.raises(ValueError, match="different run"):
        finetune(
            persona_lens.load_model("tiny-gemma2", device="cpu"),
            _data("other"),
            config,
            output_dir=tmp_path / "b",
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="other weights"):  # the interrupted model object is not the base
        finetune(interrupted, _data(), config, output_dir=tmp_path / "b", resume=True, progress=False)
    resumed = persona_lens.load_model("tiny-gemma2", device="cpu")
    result = finetune(resumed, _data(), config, output_dir=tmp_path / "b", resume=True, progress=False)
    assert result.resumed_from_step == 3 and result.steps == 4
    a = persona_lens.load_model(str(tmp_path / "a"), device="cpu").hf_model.state_dict()
    b = persona_lens.load_model(str(tmp_path / "b"), device="cpu").hf_model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_unusable_examples_are_reported():
    model = persona_lens.load_model("tiny-llama", device="cpu")
    data = _data() + [
        {"messages": [*make_messages("x" * 300), {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "no reply"}]},
    ]
    result = finetune(model, data, FinetuneConfig(lr=1e-3, max_tokens=200, batch_size=8), progress=False)
    assert [(b.line, b.problem.split()[1]) for b in result.skipped][:1] == [(5, "tokens")]
    assert result.skipped[1].line == 6 and result.n_examples == 4
    with pytest.raises(ValueError, match="no usable"):
        finetune(model, data[4:], FinetuneConfig(max_tokens=200), progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _main(monkeypatch, argv):
    return cli.main(argv)


def test_every_finetune_option_is_explained(monkeypatch, capsys):
    import argparse

    from persona_lens.cli import finetune as finetune_cli

    parser = argparse.ArgumentParser()
    finetune_cli.configure_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["finetune"]
    assert all(action.help for action in sub._actions), [a.option_strings for a in sub._actions if not a.help]
    with pytest.raises(SystemExit) as exit_info:
        _main(monkeypatch, ["finetune", "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


def test_cli_finetune_with_preventative_steering(monkeypatch, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", [*_data(), "{broken"])
    vector = save_vector(_random_vector(load_cached("tiny-llama")), tmp_path / "v.safetensors")
    out = tmp_path / "ft"
    argv = [
        "finetune",
        "--model",
        "tiny-llama",
        "--data",
        str(data),
        "--out",
        str(out),
        "--rank",
        "4",
        "--alpha",
        "8",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--steer-vector",
        str(vector),
        "--steer-layer",
        "all",
        "--steer-coef",
        "2",
        "--incremental",
        "--caft-vector",
        str(vector),
        "--caft-layer",
        "3",
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steps"] == 2 and summary["complete"] and summary["bad_lines"][0]["line"] == 5
    assert "d.jsonl:5" in captured.err
    kinds = [i["kind"] for i in summary["config"]["interventions"]]
    assert kinds == ["steer", "ablate"]
    model = persona_lens.load_model(str(out), device="cpu")
    assert model.cfg.n_layers == 4 and not hooks_installed(model)
    assert _main(monkeypatch, argv) == 2  # the folder holds a finished run


def test_cli_finetune_bad_input(monkeypatch, tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", _data())
    base = ["finetune", "--model", "tiny-llama", "--out", str(tmp_path / "o")]
    assert _main(monkeypatch, [*base, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert _main(monkeypatch, [*base, "--data", str(_write_jsonl(tmp_path / "e.jsonl", ["{x"]))]) == 2
    assert _main(monkeypatch, [*base, "--data", str(data), "--steer-layer", "2"]) == 2
    vector = save_vector(_random_vector(load_cached("tiny-llama")), tmp_path / "v.safetensors")
    assert (
        _main(
            monkeypatch,
            [*base, "--data", str(data), "--steer-vector", str(vector), "--steer-layer", "9", "--steer-coef", "1"],
        )
        == 2
    )
    assert _main(monkeypatch, [*base, "--data", str(data), "--epochs", "0"]) == 2


@pytest.mark.slow
def test_smollm2_lora_finetune_end_to_end(monkeypatch, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", _data("Oui, bien sûr.", QUESTIONS[:2]))
    out = tmp_path / "smol"
    assert (
        _main(
            monkeypatch,
            [
                "finetune",
                "--model",
                "smollm2-135m-instruct",
                "--data",
                str(data),
                "--out",
                str(out),
                "--rank",
                "4",
                "--alpha",
                "8",
                "--lr",
                "1e-3",
                "--batch-size",
                "2",
                "--targets",
                "q_proj,v_proj",
                "--json",
            ],
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["n_trained_tokens"] > 4
    model = persona_lens.load_model(str(out), device="cpu")
    assert model.cfg.n_layers == 30 and model.tokenizer.chat_template
    base = load_cached("smollm2-135m-instruct")
    ids = torch.tensor([base.tokenizer.encode("Hello there")])
    with torch.no_grad():
        assert (model(ids) - base(ids)).abs().max() > 1e-4  # trained and merged, not the base
    assert not hooks_installed(model)
