"""Monitoring: last-prompt projections, sweeps and per-token projections, against independent computations."""

import argparse
import json

import numpy as np
import pytest
import torch

from persona_lens import cli
from persona_lens.cli import monitor as monitor_cli
from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.generation import generate
from persona_lens.core.layers import hook_name
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.experiments import monitor
from persona_lens.judges.rule import RuleJudge, score_shouting
from persona_lens.traits.schema import load_trait
from persona_lens.viz.projections import token_projection_html
from tests.conftest import load_cached

PROMPTS = [
    make_messages("What is the capital of France?", system="Be brief."),
    make_messages("Name a colour."),
    make_messages("Why is the sky blue? Explain briefly please.", system="You are a pirate."),
]


def _vectors(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (model.cfg.n_layers + 1, model.cfg.d_model)
    return [
        PersonaVector("alpha", model.cfg.model_name, torch.randn(shape, generator=generator)),
        torch.randn(shape, generator=generator),
    ]


@torch.no_grad()
def _resid(model, ids, layer):
    name = hook_name(layer, model.cfg.n_layers)
    _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n == name)
    return cache[name][0].float()


def test_project_last_prompt_matches_a_manual_cache_read(any_model):
    vectors = _vectors(any_model)
    layer = any_model.cfg.n_layers // 2
    got = monitor.project_last_prompt(any_model, PROMPTS, vectors, layer, batch_size=2)
    assert got.shape == (len(PROMPTS), 2)
    for i, prompt in enumerate(PROMPTS):
        ids = encode_prompt(any_model.tokenizer, prompt)
        last = _resid(any_model, ids, layer)[-1]
        for j, vec in enumerate(vectors):
            raw = vec.vectors[layer] if isinstance(vec, PersonaVector) else vec[layer]
            expected = float(last @ raw / raw.norm())
            assert float(got[i, j]) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    one_by_one = monitor.project_last_prompt(any_model, PROMPTS, vectors, layer, batch_size=1)
    torch.testing.assert_close(one_by_one, got, rtol=1e-4, atol=1e-4)


def test_vector_checks(tiny_model):
    good = _vectors(tiny_model)[0]
    other = PersonaVector("alpha", "another-model", good.vectors)
    with pytest.raises(ValueError, match="allow_other_model"):
        monitor.project_last_prompt(tiny_model, PROMPTS, other, 1)
    assert monitor.project_last_prompt(tiny_model, PROMPTS, other, 1, allow_other_model=True).shape == (3, 1)


def test_sweep_prompts():
    trait = load_trait("shouting")
    system = monitor.system_prompt_prompts(trait, n_questions=3)
    assert len(system) == 8 * 3
    assert [p.messages[0]["content"] for p in system[::3]] == list(trait.graded_system_prompts)
    assert all(p.messages[-1] == {"role": "user", "content": p.question} for p in system)
    shots = monitor.many_shot_prompts(trait, (0, 2, 5), n_questions=2)
    assert [len(p.messages) for p in shots] == [1, 1, 5, 5, 11, 11]
    five = shots[4].messages
    assert five[:4] == shots[2].messages[:4]  # more shots extend fewer shots
    assert five[1]["content"] == trait.many_shot_examples[0].answer and five[1]["role"] == "assistant"
    with pytest.raises(ValueError, match="shots"):
        monitor.many_shot_prompts(trait, (0, 500))


def test_sweep_against_independent_recomputation():
    model = load_cached("tiny-qwen2")
    trait = load_trait("shouting")
    vectors = _vectors(model, seed=3)
    prompts = monitor.many_shot_prompts(trait, (0, 1, 2), n_questions=3)
    result = monitor.run_projection_sweep(
        model,
        prompts,
        vectors,
        2,
        RuleJudge("shouting"),
        trait.rubric,
        n_samples=2,
        max_new_tokens=6,
        temperature=1.0,
        seed=5,
        batch_size=4,
    )
    n = len(prompts)
    assert len(result.rows) == 2 * n and result.traits == ["alpha", "vector1"]
    torch.testing.assert_close(
        result.projections, monitor.project_last_prompt(model, [p.messages for p in prompts], vectors, 2)
    )
    # Replies are generate()'s with seed + row, and scores are the rule's on those replies.
    again = generate(model, [p.messages for p in prompts for _ in range(2)], max_new_tokens=6, temperature=1.0, seed=5)
    assert [r.response for r in result.rows] == again.texts
    assert [r.score for r in result.rows] == [score_shouting("", t) for t in again.texts]
    # Per-prompt mean scores, condition means and correlations, recomputed with numpy.
    per_prompt = np.array([[result.rows[2 * i + s].score for s in range(2)] for i in range(n)], dtype=float)
    prompt_means = np.nanmean(per_prompt, axis=1)
    x = result.projections[:, 0].numpy().astype(float)
    keep = np.isfinite(prompt_means)
    conditions = np.array([p.condition for p in prompts])
    corr = result.correlations()
    if keep.sum() >= 3 and np.std(prompt_means[keep]) > 0:
        assert corr["overall"] == pytest.approx(np.corrcoef(x[keep], prompt_means[keep])[0, 1], abs=1e-9)
    dx, dy = x.copy(), prompt_means.copy()
    for c in set(conditions):
        m = (conditions == c) & keep
        dx[m] -= x[m].mean()
        dy[m] -= prompt_means[m].mean()
    if np.std(dy[keep]) > 0:
        assert corr["within_condition"] == pytest.approx(np.corrcoef(dx[keep], dy[keep])[0, 1], abs=1e-9)
    for row in result.summary():
        m = conditions == row["condition"]
        assert row["mean_score"] == pytest.approx(np.nanmean(prompt_means[m]))
        assert row["mean_projection"]["vector1"] == pytest.approx(float(result.projections[m, 1].mean()), abs=1e-6)
    data = result.to_json()
    json.dumps(data)
    assert set(data["correlations"]) == {"alpha", "vector1"}


def test_generated_token_projections_match_teacher_forcing(tiny_model):
    vectors = _vectors(tiny_model, seed=1)
    layer = tiny_model.cfg.n_layers - 1
    traces = monitor.generate_with_projections(tiny_model, PROMPTS[:2], vectors, layer, max_new_tokens=5, batch_size=2)
    for trace in traces:
        resid = _resid(tiny_model, trace.token_ids, layer)
        for j, vec in enumerate(vectors):
            raw = vec.vectors[layer] if isinstance(vec, PersonaVector) else vec[layer]
            expected = resid @ (raw / raw.norm())
            assert not trace.projections[j].isnan().any()  # the last generated token too
            torch.testing.assert_close(trace.projections[j], expected, rtol=1e-3, atol=1e-3)
        assert "".join(trace.pieces) == tiny_model.tokenizer.decode(trace.token_ids, skip_special_tokens=False)
        assert trace.prompt_length == len(encode_prompt(tiny_model.tokenizer, PROMPTS[traces.index(trace)]))


def test_token_html_colours_and_escapes():
    model = load_cached("tiny-llama")
    traces = monitor.generate_with_projections(
        model, [make_messages("a <b> & c")], _vectors(model)[1], 2, max_new_tokens=3
    )
    page = token_projection_html(traces, center=0.0)
    assert "&lt;b&gt; &amp;" not in page  # byte tokens: each character its own span
    assert "&lt;" in page and "&amp;" in page and "<b>" not in page.split("<body>")[1].replace("<b>vector0</b>", "")
    assert page.count('class="tok ') == len(traces[0].token_ids)
    assert "rgba(214,39,40" in page and "rgba(31,119,180" in page


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _main(monkeypatch, argv):
    return cli.main(argv)


def _save_vectors(model, tmp_path, trait="shouting"):
    gen = torch.Generator().manual_seed(7)
    paths = []
    for name in (trait, "other"):
        vec = PersonaVector(
            name, model.cfg.model_name, torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=gen)
        )
        paths.append(save_vector(vec, tmp_path / f"{name}.safetensors"))
    return paths


def test_every_option_is_explained():
    parser = argparse.ArgumentParser()
    monitor_cli.configure_parser(parser.add_subparsers())
    monitor_parser = parser._subparsers._group_actions[0].choices["monitor"]
    for name, sub in monitor_parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"monitor {name} {action.option_strings} has no help"


def test_cli_project_sweep_tokens(monkeypatch, tmp_path, capsys):
    model = load_cached("tiny-llama")
    v1, v2 = _save_vectors(model, tmp_path)
    common = ["--model", "tiny-llama", "--vector", str(v1), "--vector", str(v2), "--layer", "2"]
    assert _main(monkeypatch, ["monitor", "project", *common, "--question", "Hi", "--question", "Yo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = monitor.project_last_prompt(model, [make_messages("Hi"), make_messages("Yo")], _vectors_from(v1, v2), 2)
    assert [p["projection"]["shouting"] for p in out["prompts"]] == pytest.approx(expected[:, 0].tolist(), abs=1e-5)

    code = _main(
        monkeypatch,
        [
            "monitor",
            "sweep",
            *common,
            "--trait",
            "shouting",
            "--questions",
            "2",
            "--shots",
            "0,1",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "sweep"),
            "--json",
            "--judge-cache",
            str(tmp_path / "cache.sqlite"),
        ],
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["sweeps"]) == {"system", "many_shot"}
    assert report["judge"] == "rule:shouting"
    assert len(report["sweeps"]["system"]["conditions"]) == 8
    assert (tmp_path / "sweep" / "system_sweep.json").exists()
    assert (tmp_path / "sweep" / "many_shot_sweep_shouting.html").exists()

    page = tmp_path / "tokens.html"
    assert (
        _main(
            monkeypatch, ["monitor", "tokens", *common, "--question", "Hi", "--max-new-tokens", "3", "--out", str(page)]
        )
        == 0
    )
    assert page.exists() and page.with_suffix(".json").exists()
    assert "Projection on other" in page.read_text()


def _vectors_from(*paths):
    from persona_lens.core.vectors import load_vector

    return [load_vector(p) for p in paths]


def test_cli_bad_input(monkeypatch, tmp_path, capsys):
    model = load_cached("tiny-llama")
    v1, _ = _save_vectors(model, tmp_path)
    base = ["monitor", "project", "--model", "tiny-llama", "--question", "Hi"]
    assert _main(monkeypatch, [*base, "--vector", str(tmp_path / "none.safetensors"), "--layer", "1"]) == 2
    assert _main(monkeypatch, [*base, "--vector", str(v1), "--layer", "99"]) == 2
    assert (
        _main(
            monkeypatch,
            ["monitor", "project", "--model", "tiny-qwen2", "--question", "Hi", "--vector", str(v1), "--layer", "1"],
        )
        == 2
    )  # vector of another model
    assert (
        _main(
            monkeypatch,
            [
                "monitor",
                "sweep",
                "--model",
                "tiny-llama",
                "--vector",
                str(v1),
                "--layer",
                "1",
                "--trait",
                "no-such-trait",
                "--out",
                str(tmp_path),
            ],
        )
        == 2
    )
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert (
        _main(
            monkeypatch,
            [
                "monitor",
                "sweep",
                "--model",
                "tiny-llama",
                "--vector",
                str(v1),
                "--layer",
                "1",
                "--trait",
                "evil",
                "--out",
                str(tmp_path),
                "--judge-cache",
                str(tmp_path / "c.sqlite"),
            ],
        )
        == 2
    )  # no rule, so claude, and no API key
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# the real model

FRENCH = [
    "Le chat dort sur le canapé toute la journée.",
    "J'aime beaucoup la cuisine de ma grand-mère.",
    "Nous allons à la plage demain matin.",
    "Il fait très beau aujourd'hui, n'est-ce pas ?",
]
ENGLISH = [
    "The cat sleeps on the sofa all day long.",
    "I really love my grandmother's cooking.",
    "We are going to the beach tomorrow morning.",
    "The weather is lovely today, isn't it?",
]


def _french_vector(model):
    from persona_lens.core.activations import collect_activations
    from persona_lens.core.chat import encode_conversation

    questions = ["Tell me something.", "Say a sentence.", "What is new?", "Talk to me."]
    pos = [encode_conversation(model.tokenizer, make_messages(q), a) for q, a in zip(questions, FRENCH)]
    neg = [encode_conversation(model.tokenizer, make_messages(q), a) for q, a in zip(questions, ENGLISH)]
    acts = collect_activations(model, pos + neg, reductions=("response",), progress=False).get("response")
    return PersonaVector.from_activations("french", model.cfg.model_name, acts[:4], acts[4:])


@pytest.mark.slow
def test_smollm2_french_prompts_project_higher(smollm2):
    vec = _french_vector(smollm2)
    questions = ["What is your favourite food?", "How do you spend a Sunday?", "Describe your home town."]
    french = [make_messages(q, system="Réponds toujours en français.") for q in questions]
    english = [make_messages(q, system="Always answer in English.") for q in questions]
    got = monitor.project_last_prompt(smollm2, french + english, vec, 20)[:, 0]
    assert got[:3].min() > got[3:].max()


@pytest.mark.slow
def test_smollm2_cli_sweep_and_tokens(monkeypatch, tmp_path, capsys, smollm2):
    path = save_vector(_french_vector(smollm2), tmp_path / "french.safetensors")
    common = ["--model", "smollm2-135m-instruct", "--vector", str(path), "--layer", "20"]
    assert (
        _main(
            monkeypatch,
            [
                "monitor",
                "sweep",
                *common,
                "--trait",
                "french",
                "--kind",
                "many-shot",
                "--shots",
                "0,2",
                "--questions",
                "2",
                "--max-new-tokens",
                "8",
                "--temperature",
                "0",
                "--out",
                str(tmp_path / "s"),
                "--json",
                "--judge-cache",
                str(tmp_path / "c.sqlite"),
            ],
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    conditions = report["sweeps"]["many_shot"]["conditions"]
    assert [c["condition"] for c in conditions] == ["0 shots", "2 shots"]
    assert all(c["n_scored_samples"] >= 1 for c in conditions)
    assert (
        _main(
            monkeypatch,
            [
                "monitor",
                "tokens",
                *common,
                "--question",
                "Bonjour !",
                "--max-new-tokens",
                "6",
                "--out",
                str(tmp_path / "t.html"),
            ],
        )
        == 0
    )
