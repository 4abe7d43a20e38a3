"""Sweeps: one batch equals separate runs, resume, layer choice, outputs, CLI errors."""

import csv
import json

import pytest
import torch

import persona_lens.experiments.evaluate as E
import persona_lens.experiments.steering_sweep as S
from persona_lens.cli.sweep import write_sweep_figure
from persona_lens.core.generation import generate
from persona_lens.core.hooks import steer
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import load_cached


def _vector(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
    return PersonaVector("shouting", model.cfg.model_name, tensor, "response", 1, 1, {})


def _config(**kw):
    defaults = dict(
        layers=[1, 3],
        coefficients=[0.5, 2.0],
        n_questions=3,
        max_new_tokens=6,
        temperature=0.0,
        batch_size=8,
        coherence_threshold=0.0,
    )
    return S.SteeringSweepConfig(**{**defaults, **kw})


def _sweep(model, vector, out, **kw):
    return S.run_steering_sweep(
        model,
        vector,
        load_trait("shouting"),
        judge=RuleJudge("shouting"),
        coherence_judge=RuleJudge("coherence"),
        config=_config(**kw),
        out_dir=out,
        progress=False,
    )


def test_one_batch_of_coefficients_equals_separate_runs(tmp_path, tiny_model):
    vector = _vector(tiny_model)
    result = _sweep(tiny_model, vector, tmp_path)
    records = S.JsonlRecords(tmp_path / "responses.jsonl").load()
    trait = load_trait("shouting")
    questions = [[{"role": "user", "content": q}] for q in trait.eval_questions[:3]]
    for cell in result.cells:
        with steer(tiny_model, vector, layer=cell.layer, coef=cell.coef_raw, raw=True, positions="response"):
            alone = generate(tiny_model, questions, max_new_tokens=6)
        key = S._cell_key(cell.layer, "relative", cell.coef_relative)
        batched = [records[f"{key}|q{q}|s0"]["response"] for q in range(3)]
        assert batched == alone.texts


def test_outputs_table_figure_and_choice(tmp_path):
    model = load_cached("tiny-llama")
    result = _sweep(model, _vector(model), tmp_path)
    write_sweep_figure(result)  # figures are drawn by the CLI layer
    rows = list(csv.DictReader(result.paths["csv"].open()))
    assert len(rows) == 1 + 2 * 2  # baseline + layers x coefficients
    assert {"coef_raw", "coef_relative", "trait_mean", "coherence_mean"} <= set(rows[0])
    assert result.paths["html"].exists() and result.paths["html"].stat().st_size > 10_000
    summary = json.loads(result.paths["json"].read_text())
    assert summary["reason"] == result.reason
    assert result.chosen is not None and result.chosen.layer in (1, 3)
    for cell in result.cells:  # relative and raw coefficients agree with the recorded norms
        norms = summary["median_residual_norm"]
        expected = cell.coef_relative * norms[cell.layer] / float(_vector(model).vectors[cell.layer].norm())
        assert cell.coef_raw == pytest.approx(expected, rel=1e-5)


def test_rerun_generates_nothing(tmp_path, monkeypatch):
    model = load_cached("tiny-qwen2")
    first = _sweep(model, _vector(model), tmp_path)
    monkeypatch.setattr(E, "generate", lambda *a, **k: pytest.fail("a finished sweep must not generate"))
    again = _sweep(model, _vector(model), tmp_path)
    assert [c.trait_mean for c in again.cells] == [c.trait_mean for c in first.cells]


def test_adding_coefficients_to_a_finished_sweep_only_generates_the_new_cells(tmp_path, monkeypatch):
    model = load_cached("tiny-gemma2")
    _sweep(model, _vector(model), tmp_path)
    seen = []
    real = E.generate

    def counting(model_, conversations, **kwargs):
        seen.append(len(conversations))
        return real(model_, conversations, **kwargs)

    monkeypatch.setattr(E, "generate", counting)
    _sweep(model, _vector(model), tmp_path, coefficients=[0.5, 2.0, 4.0])
    assert seen == [3, 3]  # one new coefficient x 3 questions, for each of the two layers


def test_choose_layer_takes_the_cell_with_most_replies_both_trait_and_coherent():
    """Issue 13: a cell whose mean coherence passes while many replies are broken loses to one whose replies are
    both trait-expressing and coherent more often."""

    def cell(layer, rel, trait, coherence, both):
        return S.SteeringCell(layer, rel, rel, 10, trait, trait / 100, coherence, coherence / 100, 0, both_rate=both)

    baseline = cell(None, 0.0, 5.0, 90.0, 0.0)
    cells = [
        cell(4, 0.2, 40, 90, 0.3),
        cell(4, 0.6, 95, 80, 0.4),
        cell(8, 0.2, 60, 70, 0.55),
        cell(8, 0.4, 70, 74, 0.5),
    ]
    chosen, reason = S.choose_layer(cells, baseline, 75.0)
    assert (chosen.layer, chosen.coef_relative) == (8, 0.2)  # mean coherence 70 < 75, yet the most good replies
    assert "layer 8" in reason and "0.55 vs 0.00 unsteered" in reason
    none, why = S.choose_layer([cell(4, 0.6, 95, 30, 0.0)], baseline, 75.0)
    assert none is None and "coherence" in why


def test_both_rate_counts_replies_that_pass_both_thresholds():
    records = [
        {"trait_score": 80, "coherence": 90},
        {"trait_score": 80, "coherence": 40},
        {"trait_score": 10, "coherence": 95},
        {"trait_score": None, "coherence": 95},
        {"trait_score": 75, "coherence": 75},
    ]
    summary = E.summarise_scores(records, trait_threshold=50, coherence_threshold=75)
    assert summary.both_rate == pytest.approx(2 / 5)
    assert summary.coherence_mean > 75  # the mean passes; only 2 of 5 replies are both


def test_neighbour_cells():
    def cell(layer, rel):
        return S.SteeringCell(layer, rel, rel, 1, None, None, None, None, 0)

    cells = [cell(layer, rel) for layer in (4, 9, 14) for rel in (0.1, 0.2, 0.3)]
    centre = cells[4]  # layer 9, 0.2
    near = S.neighbour_cells(cells, centre)
    assert near[0] is centre
    assert {(c.layer, c.coef_relative) for c in near[1:]} == {(9, 0.1), (9, 0.3), (4, 0.2), (14, 0.2)}


def test_two_runs_of_one_sweep_write_identical_json(tmp_path):
    """Determinism (issue 13): the same sweep and seed, twice from nothing, gives byte-identical numbers."""
    model = load_cached("tiny-llama")
    outputs = []
    for run in ("a", "b"):
        result = S.run_steering_sweep(
            model,
            _vector(model),
            load_trait("shouting"),
            judge=RuleJudge("shouting"),
            coherence_judge=RuleJudge("coherence"),
            config=_config(temperature=1.0, n_samples=2, seed=3),
            out_dir=tmp_path / run,
            progress=False,
        )
        outputs.append((result.paths["json"].read_bytes(), result.paths["samples"].read_text()))
    assert outputs[0] == outputs[1]
    assert b'"both_rate"' in outputs[0][0]


def test_sweep_writes_samples_of_the_chosen_and_neighbouring_cells(tmp_path):
    model = load_cached("tiny-llama")
    result = _sweep(model, _vector(model), tmp_path, coefficients=[0.5, 1.0, 2.0])
    text = result.paths["samples"].read_text()
    assert result.paths["samples"].parent == result.out_dir
    chosen = result.chosen
    assert f"## layer {chosen.layer}, coefficient {chosen.coef_relative:g} relative" in text
    assert "(chosen)" in text and "(neighbour)" in text and "(unsteered)" in text
    records = S.JsonlRecords(tmp_path / "responses.jsonl").load()
    key = S._cell_key(chosen.layer, "relative", chosen.coef_relative)
    for q in range(3):
        assert json.dumps(records[f"{key}|q{q}|s0"]["response"], ensure_ascii=False) in text


def test_default_layers_spread_over_the_middle():
    assert S.default_layers(30) == [4, 14, 24]
    assert S.default_layers(30, count=5) == [4, 9, 14, 19, 24]
    assert S.default_layers(30, count=6) == [4, 8, 12, 16, 20, 24]
    assert S.default_layers(4) == [1, 2, 3]
    assert all(1 <= x <= 28 for x in S.default_layers(28))


def test_layer_zero_and_bad_vectors_are_refused(tmp_path):
    model = load_cached("tiny-llama")
    with pytest.raises(ValueError, match="embedding"):
        _sweep(model, _vector(model), tmp_path, layers=[0])
    other = PersonaVector("x", "other", torch.randn(3, 5), "response", 1, 1, {})
    with pytest.raises(ValueError):
        _sweep(model, other, tmp_path)


def test_cli_errors_are_exit_code_2(tmp_path, capsys):
    from persona_lens.cli.sweep import main

    assert main(["--trait", "no-such-trait", "--model", "tiny-llama", "--out", str(tmp_path)]) == 2
    assert "no-such-trait" in capsys.readouterr().err
    model = load_cached("tiny-llama")
    path = tmp_path / "v.safetensors"
    save_vector(PersonaVector("shouting", "some-other-model", torch.randn(5, 64), "response", 1, 1, {}), path)
    assert main(["--trait", "shouting", "--model", "tiny-llama", "--vector", str(path), "--out", str(tmp_path)]) == 2
    assert "some-other-model" in capsys.readouterr().err
    assert model.cfg.n_layers == 4


def test_cli_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from persona_lens.cli.sweep import main

    code = main(
        [
            "--trait",
            "shouting",
            "--model",
            "tiny-llama",
            "--out",
            str(tmp_path),
            "--quiet",
            "--json",
            "--layers",
            "2",
            "--coefficients",
            "1",
            "--questions",
            "2",
            "--max-new-tokens",
            "4",
            "--extract-questions",
            "2",
            "--extract-pairs",
            "1",
            "--extract-samples",
            "2",
            "--extract-max-new-tokens",
            "4",
            "--coherence-threshold",
            "0",
            "--extract-coherence-threshold",
            "0",
            "--judge-cache",
            str(tmp_path / "cache.sqlite"),
            "--coherence",
            "rule",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert result["paths"]["csv"].endswith("sweep.csv")
    # extracted first into the run folder's extraction folder for these reply settings
    assert (tmp_path / "extract-t4-T1-p1-s0" / "vector_response.safetensors").exists()


def test_prompted_anchor_cell_answers_the_same_questions_under_the_positive_prompt(tmp_path):
    model = load_cached("tiny-llama")
    result = _sweep(model, _vector(model), tmp_path)
    trait = load_trait("shouting")
    records = S.JsonlRecords(tmp_path / "responses.jsonl").load()
    prompted = [records[f"prompted|q{q}|s0"] for q in range(3)]
    positives = [p.positive for p in trait.prompt_pairs]
    assert [r["system"] for r in prompted] == [positives[q % len(positives)] for q in range(3)]
    alone = generate(
        model,
        [
            [{"role": "system", "content": r["system"]}, {"role": "user", "content": q}]
            for r, q in zip(prompted, trait.eval_questions[:3])
        ],
        max_new_tokens=6,
    )
    assert [r["response"] for r in prompted] == alone.texts
    assert result.prompted is not None and result.prompted.n == 3
    assert json.loads(result.paths["json"].read_text())["prompted"]["n"] == 3
    assert "system-prompted" in result.paths["samples"].read_text()
    assert _sweep(model, _vector(model), tmp_path / "positive", condition="positive").prompted is None


def test_cli_says_when_questions_asks_for_more_than_the_trait_has(tmp_path, capsys):
    """``--questions 1000`` on a trait with fewer evaluation questions silently used them all."""
    from persona_lens.cli.sweep import main

    model = load_cached("tiny-llama")
    path = tmp_path / "v.safetensors"
    save_vector(PersonaVector("shouting", model.cfg.model_name, torch.randn(5, 64), "response", 1, 1, {}), path)
    n = len(load_trait("shouting").eval_questions)
    argv = ["--trait", "shouting", "--model", "tiny-llama", "--vector", str(path), "--out", str(tmp_path / "run")]
    argv += ["--layers", "2", "--coefficients", "1", "--max-new-tokens", "1", "--coherence", "rule", "--quiet"]
    assert main([*argv, "--judge", "rule", "--questions", "1000"]) == 0
    assert f"--questions 1000: 'shouting' has {n} evaluation questions" in capsys.readouterr().err
    with open(next((tmp_path / "run").rglob("sweep.csv"))) as table:
        assert {row["n"] for row in csv.DictReader(table)} == {str(n)}


def test_cli_refuses_a_coefficient_that_overflows_the_normalisation(tmp_path, capsys):
    """``--coefficients 1e30`` exited 0 with replies drawn uniformly (the steered residual's squares overflow
    float32 in RMSNorm; see tests/core/test_hooks.py)."""
    from persona_lens.cli.sweep import main

    model = load_cached("tiny-llama")
    path = tmp_path / "v.safetensors"
    save_vector(PersonaVector("shouting", model.cfg.model_name, torch.randn(5, 64), "response", 1, 1, {}), path)
    argv = ["--trait", "shouting", "--model", "tiny-llama", "--vector", str(path), "--out", str(tmp_path / "run")]
    argv += ["--layers", "2", "--max-new-tokens", "1", "--questions", "1", "--coherence", "rule", "--judge", "rule"]
    assert main([*argv, "--quiet", "--coefficients", "1e30"]) == 2
    assert "overflow float32" in capsys.readouterr().err
