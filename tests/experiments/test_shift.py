"""Finetuning shift: exact against a manual computation, a known answer, the study's correlation, and the CLI."""

import json

import numpy as np
import pytest
import torch

import persona_lens
from persona_lens import cli
from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.layers import hook_name
from persona_lens.core.tiny import build_tiny
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.experiments import shift
from persona_lens.experiments.finetune import save_model
from persona_lens.judges.rule import RuleJudge, score_shouting
from tests.conftest import load_cached

PROMPTS = [
    make_messages("What is the capital of France?"),
    make_messages("Name a colour.", system="Be brief."),
    make_messages("Tell me about the sea."),
]


def _vector(model, name="shouting", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return PersonaVector(
        name, model.cfg.model_name, torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
    )


def _perturbed(name, scale, seed=1):
    """A different model of the same shape: the base with noise on every weight matrix."""
    model = persona_lens.load_model(name, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.hf_model.parameters():
            if param.dim() == 2:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    return model


@torch.no_grad()
def _last_token_stack(model, prompts):
    names = [hook_name(layer, model.cfg.n_layers) for layer in range(model.cfg.n_layers + 1)]
    rows = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(model.tokenizer, prompt)])
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
        rows.append(torch.stack([cache[n][0, -1].float() for n in names]))
    return torch.stack(rows)  # [prompt, layer, d]


def test_shift_matches_a_manual_computation(tiny_model):
    finetuned = _perturbed(tiny_model.cfg.model_name, 0.02)
    vectors = [_vector(tiny_model), _vector(tiny_model, "other", seed=5)]
    layer = 2
    result = shift.compute_shift(tiny_model, finetuned, PROMPTS, vectors, layer, batch_size=2)
    base_acts, ft_acts = _last_token_stack(tiny_model, PROMPTS), _last_token_stack(finetuned, PROMPTS)
    for vec in vectors:
        per_prompt = [
            float((ft_acts[i, layer] - base_acts[i, layer]) @ vec.vectors[layer] / vec.vectors[layer].norm())
            for i in range(len(PROMPTS))
        ]
        assert result.shift[vec.trait] == pytest.approx(sum(per_prompt) / len(per_prompt), rel=1e-4, abs=1e-5)
        for lay in range(tiny_model.cfg.n_layers + 1):
            unit = vec.vectors[lay] / vec.vectors[lay].norm()
            expected = float(((ft_acts[:, lay] - base_acts[:, lay]) @ unit).mean())
            assert result.shift_by_layer[vec.trait][lay] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert abs(result.shift["shouting"]) > 1e-3
    same = shift.compute_shift(tiny_model, tiny_model, PROMPTS, vectors, layer)
    assert all(abs(v) < 1e-5 for values in same.shift_by_layer.values() for v in values)


def _moved_embedding(name, vector, amount):
    """The base model with the last prompt token's embedding moved by ``amount`` along the layer-0 unit vector."""
    model = persona_lens.load_model(name, device="cpu")
    token = encode_prompt(model.tokenizer, PROMPTS[0])[-1]
    unit = vector.vectors[0] / vector.vectors[0].norm()
    with torch.no_grad():
        model.hf_model.get_input_embeddings().weight[token] += amount * unit
    return model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])  # gemma scales its embeddings by sqrt(d_model)
def test_known_shift_at_the_embeddings(name):
    base = load_cached(name)
    vector = _vector(base)
    result = shift.compute_shift(base, _moved_embedding(name, vector, 1.75), PROMPTS, vector, 0)
    assert result.shift["shouting"] == pytest.approx(1.75, abs=1e-5)


def test_study_with_given_scores_and_with_a_judge(tmp_path):
    name = "tiny-llama"
    base = load_cached(name)
    vectors = [_vector(base), _vector(base, "other", seed=2)]
    models = [_moved_embedding(name, vectors[0], a) for a in (0.5, -1.0, 2.0)]
    folder = save_model(_moved_embedding(name, vectors[0], 3.0), tmp_path / "m4")
    given = {"m1": 30.0, "m2": 10.0, "m3": 55.0, str(folder): 70.0}
    study = shift.shift_study(
        base, [*models, str(folder)], PROMPTS, vectors, 0, labels=["m1", "m2", "m3", str(folder)], scores=given
    )
    shifts = study.shifts("shouting")
    assert shifts == pytest.approx([0.5, -1.0, 2.0, 3.0], abs=1e-5)
    corr = study.correlation("shouting")
    assert corr["n_models"] == 4
    assert corr["pearson_r"] == pytest.approx(np.corrcoef(shifts, [30, 10, 55, 70])[0, 1], abs=1e-9)
    other = study.correlation("other")
    assert other["pearson_r"] == pytest.approx(np.corrcoef(study.shifts("other"), [30, 10, 55, 70])[0, 1], abs=1e-9)

    judged = shift.shift_study(
        base,
        models[:1],
        PROMPTS,
        vectors,
        0,
        judge=RuleJudge("shouting"),
        rubric="{question} {answer}",
        questions=["Hi", "Yo"],
        n_samples=2,
        max_new_tokens=5,
        evaluate_base=True,
    )
    evaluation = judged.results[0].evaluation
    assert len(evaluation.texts) == 4
    assert evaluation.scores == [score_shouting("", t) for t in evaluation.texts]
    finite = [s for s in evaluation.scores if s is not None]
    assert evaluation.mean_score == (pytest.approx(sum(finite) / len(finite)) if finite else None)
    assert judged.base_evaluation is not None
    json.dumps(judged.to_json(with_texts=True))


def test_vectors_must_fit_the_base():
    base = load_cached("tiny-llama")
    foreign = PersonaVector("x", "another-model", torch.randn(base.cfg.n_layers + 1, base.cfg.d_model))
    with pytest.raises(ValueError, match="allow_other_model"):
        shift.shift_study(base, [base], PROMPTS, foreign, 1)
    assert shift.shift_study(base, [base], PROMPTS, foreign, 1, allow_other_model=True).shifts() == pytest.approx(
        [0.0], abs=1e-6
    )


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _main(monkeypatch, argv):
    return cli.main(argv)


def test_every_shift_option_is_explained(monkeypatch, capsys):
    import argparse

    from persona_lens.cli import shift as shift_cli

    parser = argparse.ArgumentParser()
    shift_cli.configure_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["shift"]
    assert all(action.help for action in sub._actions), [a.option_strings for a in sub._actions if not a.help]
    with pytest.raises(SystemExit) as exit_info:
        _main(monkeypatch, ["shift", "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


def test_cli_shift(monkeypatch, tmp_path, capsys):
    name = "tiny-llama"
    base = load_cached(name)
    vector = _vector(base)
    vector_path = save_vector(vector, tmp_path / "v.safetensors")
    folders = [
        str(save_model(_moved_embedding(name, vector, a), tmp_path / f"ft{i}")) for i, a in enumerate((0.0, 1.0, 2.5))
    ]
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is the capital of France?\nName a fruit.\n")
    argv = [
        "shift",
        "--model",
        name,
        "--finetuned",
        *folders,
        "--vector",
        str(vector_path),
        "--layer",
        "0",
        "--prompts",
        str(prompts),
        "--given-score",
        f"{folders[0]}=5",
        "--given-score",
        "ft1=15",
        "--given-score",
        "ft2=20",
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    summary = json.loads(capsys.readouterr().out)
    shifts = [m["shift"]["shouting"] for m in summary["models"]]
    assert shifts == pytest.approx([0.0, 1.0, 2.5], abs=1e-5)
    assert [m["label"] for m in summary["models"]] == ["ft0", "ft1", "ft2"]
    assert summary["correlations"]["shouting"]["pearson_r"] == pytest.approx(
        np.corrcoef([0.0, 1.0, 2.5], [5, 15, 20])[0, 1], abs=1e-6
    )
    assert (tmp_path / "out" / "shift_shouting.html").exists() and (tmp_path / "out" / "shift.csv").exists()

    argv = [
        "shift",
        "--model",
        name,
        "--finetuned",
        folders[1],
        "--vector",
        str(vector_path),
        "--layer",
        "2",
        "--trait",
        "shouting",
        "--questions",
        "2",
        "--score",
        "--score-base",
        "--max-new-tokens",
        "4",
        "--judge-cache",
        str(tmp_path / "cache.sqlite"),
        "--out",
        str(tmp_path / "out2"),
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "out2" / "shift.json").read_text())
    for evaluation, score in (
        (saved["models"][0]["evaluation"], summary["models"][0]["score"]),
        (saved["base_evaluation"], summary["base_score"]),
    ):
        assert evaluation["n_replies"] == 2 and len(evaluation["texts"]) == 2
        rescored = [v for v in (score_shouting("", t) for t in evaluation["texts"]) if v is not None]
        assert score == (pytest.approx(sum(rescored) / len(rescored)) if rescored else None)


def test_cli_shift_bad_input(monkeypatch, tmp_path):
    base = load_cached("tiny-llama")
    vector_path = save_vector(_vector(base), tmp_path / "v.safetensors")
    common = ["shift", "--model", "tiny-llama", "--vector", str(vector_path), "--out", str(tmp_path / "o")]
    assert _main(monkeypatch, [*common, "--finetuned", "tiny-llama", "--layer", "1"]) == 2  # no prompts
    assert (
        _main(monkeypatch, [*common, "--finetuned", str(tmp_path / "nowhere"), "--layer", "1", "--trait", "shouting"])
        == 2
    )
    hf_model, tokenizer = build_tiny("tiny-llama", n_layers=2)  # another shape: not a finetune of the base
    hf_model.save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    assert (
        _main(monkeypatch, [*common, "--finetuned", str(tmp_path / "small"), "--layer", "1", "--trait", "shouting"])
        == 2
    )
    assert (
        _main(
            monkeypatch,
            [
                *common,
                "--finetuned",
                "tiny-llama",
                "--layer",
                "1",
                "--trait",
                "shouting",
                "--given-score",
                "tiny-llama=high",
            ],
        )
        == 2
    )
    assert (
        _main(
            monkeypatch,
            [*common, "--finetuned", "tiny-llama", "--layer", "1", "--prompts", str(tmp_path / "none.txt"), "--score"],
        )
        == 2
    )


@pytest.mark.slow
def test_smollm2_shift_after_a_real_finetune(monkeypatch, tmp_path, capsys, smollm2):
    from persona_lens.experiments.finetune import FinetuneConfig, finetune
    from tests.experiments.test_monitor import _french_vector

    vector_path = save_vector(_french_vector(smollm2), tmp_path / "french.safetensors")
    model = persona_lens.load_model("smollm2-135m-instruct", device="cpu")
    data = [
        {"messages": [*make_messages(q), {"role": "assistant", "content": a}]}
        for q, a in [("Hello!", "Bonjour, je vais très bien, merci."), ("Any plans?", "Je vais à la plage.")]
    ]
    finetune(
        model,
        data,
        FinetuneConfig(
            method="lora", rank=4, alpha=8, lr=1e-3, epochs=2, batch_size=2, targets=["q_proj", "v_proj", "o_proj"]
        ),
        output_dir=tmp_path / "ft",
        progress=False,
    )
    del model
    argv = [
        "shift",
        "--model",
        "smollm2-135m-instruct",
        "--finetuned",
        str(tmp_path / "ft"),
        "--vector",
        str(vector_path),
        "--layer",
        "20",
        "--trait",
        "french",
        "--questions",
        "2",
        "--score",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--judge-cache",
        str(tmp_path / "c.sqlite"),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["models"][0]["shift"]["french"] > 0  # trained on French replies: moved towards French
