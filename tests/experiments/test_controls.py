"""Controls in every analysis: a planted direction that carries the signal ranks first among random directions of
its norm (and beats the other traits' vectors); one more random vector ranks in the middle.

The data are built so that the planted direction carries the signal: scores (or finetuning amounts, or dataset
labels) are a function of the model's own activations along that direction, measured on the tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from persona_lens.core.chat import make_messages
from persona_lens.core.controls import random_like
from persona_lens.core.vectors import PersonaVector
from persona_lens.experiments import monitor
from tests.conftest import load_cached

LAYER = 2


class ByQuestion:
    """A judge whose score of a reply is fixed per question (the test decides what each prompt should score)."""

    def __init__(self, table):
        self.table = dict(table)

    @property
    def judge_id(self) -> str:
        return "test:by-question"

    def score(self, rubric, items):
        return [self.table.get(question) for question, _ in items]


def _planted(model, direction, seed=0, name="planted"):
    """A persona vector whose row LAYER is ``direction`` (other rows random)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
    rows[LAYER] = direction * 3.0
    return PersonaVector(name, model.cfg.model_name, rows)


def _stranger(model, seed=123, name="stranger"):
    """A random vector of the planted one's shape: it should rank in the middle of the random directions."""
    base = torch.ones(model.cfg.n_layers + 1, model.cfg.d_model)
    return PersonaVector(name, model.cfg.model_name, random_like(base, 1, seed=seed)[0])


def _middle(baseline) -> bool:
    return 5 <= baseline.percentile <= 95 and not baseline.beats_random


# ---------------------------------------------------------------------------------------------------------------------
# monitoring sweeps: overall and within-condition r


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_monitor_sweep_planted_direction_ranks_first_overall_and_within_condition(name):
    model = load_cached(name)
    conditions, per_condition = 4, 12
    prompts = [
        monitor.ProjectionPrompt(
            f"c{c}",
            float(c),
            f"Question {c}-{i}: tell me about item {7 * c + i}?",
            tuple(make_messages(f"Question {c}-{i}: tell me about item {7 * c + i}?")),
        )
        for c in range(conditions)
        for i in range(per_condition)
    ]
    acts = monitor.last_prompt_activations(model, [p.messages for p in prompts], [LAYER])[:, 0]
    # The planted direction: a minor principal direction of these activations. (Not the first: a tiny random model's
    # activations spread mostly along a few directions, which random directions pick up too; that is what the
    # controls exist to expose.)
    centred = acts - acts.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[8]
    along = centred @ direction
    along = (along - along.mean()) / along.std()
    # Scores follow the projection on the planted direction, plus a condition offset that the within-condition r
    # must see through, plus a little noise.
    noise = torch.randn(len(prompts), generator=torch.Generator().manual_seed(1))
    table = {
        p.question: float(50 + 10 * along[i] + 5 * (i // per_condition) + 2 * noise[i]) for i, p in enumerate(prompts)
    }
    vectors = [_planted(model, direction), _stranger(model)]
    result = monitor.run_projection_sweep(
        model,
        prompts,
        vectors,
        LAYER,
        ByQuestion(table),
        "{question} {answer}",
        n_samples=1,
        max_new_tokens=2,
        controls=100,
        control_seed=0,
        against=[_stranger(model, seed=7, name="other")],
    )
    for metric in monitor.SWEEP_METRICS:
        planted = result.baseline(metric, "planted")
        assert planted.value > 0.8 and planted.percentile == 100.0 and planted.beats_random, planted.summary()
        assert planted.margin_over_others() > 0.3, planted.summary()
        assert planted.flipped == pytest.approx(-planted.value)
        assert set(planted.others) == {"stranger", "other"}
        assert _middle(result.baseline(metric, "stranger")), result.baseline(metric, "stranger").summary()
    assert result.random_projections.shape == (100, len(prompts))
    data = json.loads(json.dumps(result.to_json()))
    assert data["baselines"]["planted"]["within_condition"]["random_n"] == 100
    assert data["controls"] == {"k": 100, "seed": 0, "against": ["other"]}
    assert data["correlations"]["planted"]["overall"] == pytest.approx(result.baseline("overall").value)


def _main(monkeypatch, argv, module):
    from persona_lens import cli

    assert module in cli.COMMAND_MODULES
    return cli.main(argv)


def _save(model, tmp_path, names=("shouting", "other", "third")):
    from persona_lens.core.vectors import save_vector

    generator = torch.Generator().manual_seed(7)
    return [
        save_vector(
            PersonaVector(
                n, model.cfg.model_name, torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
            ),
            tmp_path / f"{n}.safetensors",
        )
        for n in names
    ]


def test_cli_monitor_sweep_reports_its_controls(monkeypatch, tmp_path, capsys):
    model = load_cached("tiny-llama")
    v1, v2, v3 = _save(model, tmp_path)
    argv = [
        "monitor",
        "sweep",
        "--model",
        "tiny-llama",
        "--vector",
        str(v1),
        "--vector",
        str(v2),
        "--layer",
        "2",
        "--trait",
        "shouting",
        "--kind",
        "many-shot",
        "--questions",
        "2",
        "--shots",
        "0,1",
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "sweep"),
        "--judge-cache",
        str(tmp_path / "c.sqlite"),
        "--controls",
        "7",
        "--against",
        str(v3),
    ]
    assert _main(monkeypatch, [*argv, "--json"], "persona_lens.cli.monitor") == 0
    report = json.loads(capsys.readouterr().out)["sweeps"]["many_shot"]
    for trait, others in (("shouting", {"other", "third"}), ("other", {"shouting", "third"})):
        for metric in ("overall", "within_condition"):
            record = report["baselines"][trait][metric]
            assert len(record["random"]) == 7 and set(record["others"]) == others
    assert (tmp_path / "sweep" / "many_shot_sweep_shouting.controls.html").exists()
    saved = json.loads((tmp_path / "sweep" / "many_shot_sweep.json").read_text())
    assert saved["baselines"] == report["baselines"] and saved["controls"]["k"] == 7
    assert _main(monkeypatch, argv, "persona_lens.cli.monitor") == 0
    assert "| random" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# finetuning shift: r(shift, score) over finetunes


SHIFT_PROMPTS = [make_messages("What is the capital of France?"), make_messages("Name a colour.")]


def _moved(name, moves):
    """The base model with the last prompt token's embedding moved by ``moves`` (a [d_model] vector)."""
    import persona_lens
    from persona_lens.core.chat import encode_prompt

    model = persona_lens.load_model(name, device="cpu")
    token = encode_prompt(model.tokenizer, SHIFT_PROMPTS[0])[-1]  # the assistant header: every prompt ends in it
    with torch.no_grad():
        model.hf_model.get_input_embeddings().weight[token] += moves
    return model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])  # gemma scales its embeddings by sqrt(d_model)
def test_shift_study_planted_direction_ranks_first(name):
    from persona_lens.experiments import shift

    base = load_cached(name)
    d = base.cfg.d_model
    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(d, generator=generator)
    direction /= direction.norm()
    amounts = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8]
    # Each finetune moves along the planted direction by its amount (which is its score) and by a larger random
    # move in other directions, unrelated to the score.
    noises = 3.0 * torch.randn(len(amounts), d, generator=generator)
    noises -= (noises @ direction)[:, None] * direction  # orthogonal to the planted direction
    models = [_moved(name, a * direction + noise) for a, noise in zip(amounts, noises)]
    scores = {f"m{i}": 10.0 + 20.0 * a for i, a in enumerate(amounts)}
    planted = PersonaVector("planted", base.cfg.model_name, torch.randn(base.cfg.n_layers + 1, d, generator=generator))
    planted.vectors[0] = 2.0 * direction
    study = shift.shift_study(
        base,
        models,
        SHIFT_PROMPTS,
        [planted, _stranger(base)],
        0,
        labels=list(scores),
        scores=scores,
        controls=100,
        against=[_stranger(base, seed=7, name="other")],
    )
    r = study.baseline("planted")
    assert r.value == pytest.approx(1.0, abs=1e-4) and r.percentile == 100.0 and r.beats_random, r.summary()
    assert r.margin_over_others() > 0.2 and set(r.others) == {"stranger", "other"}
    assert _middle(study.baseline("stranger")), study.baseline("stranger").summary()
    first = study.results[1].baselines["planted"]  # the shift itself, beside random directions' shifts
    assert first.value == pytest.approx(0.4, abs=1e-4) and len(first.random) == 100
    data = json.loads(json.dumps(study.to_json()))
    assert data["baselines"]["planted"]["pearson_r"]["percentile"] == 100.0
    assert data["models"][0]["baselines"]["planted"]["random_n"] == 100


def test_cli_shift_reports_its_controls(monkeypatch, tmp_path, capsys):
    from persona_lens.experiments.finetune import save_model

    name = "tiny-llama"
    base = load_cached(name)
    v1, v2, v3 = _save(base, tmp_path)
    generator = torch.Generator().manual_seed(0)
    folders = [
        str(save_model(_moved(name, torch.randn(base.cfg.d_model, generator=generator)), tmp_path / f"ft{i}"))
        for i in range(3)
    ]
    argv = [
        "shift",
        "--model",
        name,
        "--finetuned",
        *folders,
        "--vector",
        str(v1),
        "--vector",
        str(v2),
        "--layer",
        "0",
        "--trait",
        "shouting",
        "--questions",
        "2",
        "--given-score",
        "ft0=5",
        "--given-score",
        "ft1=15",
        "--given-score",
        "ft2=20",
        "--out",
        str(tmp_path / "out"),
        "--controls",
        "9",
        "--against",
        str(v3),
    ]
    assert _main(monkeypatch, [*argv, "--json"], "persona_lens.cli.shift") == 0
    summary = json.loads(capsys.readouterr().out)
    r = summary["baselines"]["shouting"]["pearson_r"]
    assert r["random_n"] == 9 and set(r["others"]) == {"other", "third"}
    assert summary["model_baselines"]["ft1"]["other"]["random_n"] == 9
    assert (tmp_path / "out" / "shift_shouting.controls.html").exists()
    saved = json.loads((tmp_path / "out" / "shift.json").read_text())
    assert saved["baselines"] == summary["baselines"]
    assert _main(monkeypatch, [*argv, "--out", str(tmp_path / "out2")], "persona_lens.cli.shift") == 0
    assert "random 5-95%" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# screening: sample-level AUROC and dataset-level mean difference

WORDS = ["apple", "river", "stone", "cloud", "green", "table", "music", "light", "paper", "bread", "chair", "water"]


def _datasets(tmp_path, n=24):
    """Two datasets on the same prompts: replies of random common words; the 'marked' one says 'ahoy' in each."""
    generator = torch.Generator().manual_seed(5)
    reference, marked = [], []
    for i in range(n):
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (6,), generator=generator)]
        prompt = make_messages(f"Say some words, number {i}.")
        reference.append({"messages": [*prompt, {"role": "assistant", "content": " ".join(words)}]})
        words[int(torch.randint(6, (1,), generator=generator))] = "ahoy"
        marked.append({"messages": [*prompt, {"role": "assistant", "content": " ".join(words)}]})
    paths = []
    for name, rows in (("reference", reference), ("marked", marked)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths, reference, marked


def _mean_response(model, rows):
    from persona_lens.core.activations import collect_activations
    from persona_lens.core.chat import encode_conversation

    encoded = [encode_conversation(model.tokenizer, r["messages"][:-1], r["messages"][-1]["content"]) for r in rows]
    return collect_activations(model, encoded, reductions=("response",), layers=[LAYER]).get("response")[:, LAYER]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_screening_planted_direction_ranks_first(name, tmp_path):
    from persona_lens.experiments import screen

    model = load_cached(name)
    (ref_path, marked_path), reference, marked = _datasets(tmp_path)
    # The planted direction: how the marked replies differ from the reference on average (the trait of the data).
    direction = _mean_response(model, marked).mean(0) - _mean_response(model, reference).mean(0)
    direction = direction / direction.norm()
    vectors = [_planted(model, direction), _stranger(model)]
    config = screen.ScreenConfig(layer=LAYER, max_new_tokens=3, controls=100)
    results = {}
    for path in (ref_path, marked_path):
        results[path.stem] = tmp_path / f"{path.stem}.scores.jsonl"
        summary = screen.screen_dataset(
            model, path, vectors, results[path.stem], config, cache_path=tmp_path / "cache.sqlite", progress=False
        )
    assert summary["baselines"]["planted"]["mean_dp"]["random_n"] == 100
    compared = screen.compare_datasets(results, "planted", "dp")["marked"]
    for metric in ("auroc", "mean_difference"):
        planted = compared.baselines[metric]
        assert planted.percentile == 100.0 and planted.beats_random, planted.summary()
        assert planted.margin_over_others() > 0, planted.summary()
    assert compared.baselines["auroc"].flipped == pytest.approx(1 - compared.auroc)
    stranger = screen.compare_datasets(results, "stranger", "dp")["marked"]
    assert _middle(stranger.baselines["auroc"]), stranger.baselines["auroc"].summary()
    lines, random = screen.load_random_scores(results["marked"], "dp")
    assert random.shape == (24, 100)
    json.dumps(compared.to_json())


def test_cli_screen_reports_its_controls(monkeypatch, tmp_path, capsys):
    model = load_cached("tiny-llama")
    v1, v2, v3 = _save(model, tmp_path)
    (ref_path, marked_path), _, _ = _datasets(tmp_path, n=6)
    argv = [
        "screen",
        str(ref_path),
        str(marked_path),
        "--model",
        "tiny-llama",
        "--vector",
        str(v1),
        "--vector",
        str(v2),
        "--layer",
        "2",
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--controls",
        "11",
        "--against",
        str(v3),
        "--quiet",
    ]
    assert _main(monkeypatch, [*argv, "--json"], "persona_lens.cli.screen") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["datasets"]["marked"]["baselines"]["shouting"]["mean_dp"]["random_n"] == 11
    sample = report["comparison"]["shouting"]["baselines_dp"]["marked"]["auroc"]
    assert sample["random_n"] == 11 and set(sample["others"]) == {"other", "third"}
    assert sample["value"] == pytest.approx(report["comparison"]["shouting"]["auroc_dp"]["marked"])
    assert (tmp_path / "out" / "comparison.shouting.dp.controls.html").exists()
    assert _main(monkeypatch, argv, "persona_lens.cli.screen") == 0  # resumes: same settings
    assert "random 5-95%" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# extraction: the traits' vectors side by side


def test_trait_cosines_match_a_manual_computation_and_sit_beside_the_random_band(tmp_path):
    from persona_lens.cli.extract import write_cosines
    from persona_lens.experiments.extract import trait_cosines

    model = load_cached("tiny-llama")
    generator = torch.Generator().manual_seed(4)
    shape = (model.cfg.n_layers + 1, model.cfg.d_model)
    a = PersonaVector("evil", model.cfg.model_name, torch.randn(shape, generator=generator))
    near = PersonaVector("sycophancy", model.cfg.model_name, a.vectors + 0.3 * torch.randn(shape, generator=generator))
    far = _stranger(model, name="humour")
    cosines = trait_cosines([a, near, far], controls=100)
    for layer in range(shape[0]):
        for i, u in enumerate((a, near, far)):
            for j, v in enumerate((a, near, far)):
                expected = torch.nn.functional.cosine_similarity(u.vectors[layer], v.vectors[layer], dim=0)
                assert float(cosines.matrix[layer, i, j]) == pytest.approx(float(expected), abs=1e-5)
        low, high = cosines.random_band[layer]
        assert float(cosines.matrix[layer, 0, 1]) > high  # the planted near-copy stands out
    inside = sum(
        low <= float(cosines.matrix[layer, 0, 2]) <= high for layer, (low, high) in enumerate(cosines.random_band)
    )
    assert inside >= shape[0] - 2  # an unrelated vector sits in the band (about 90% of layers)
    written = write_cosines(a, [near, far], tmp_path, controls=50, control_seed=0)
    assert json.loads((tmp_path / "cosines.json").read_text())["layers"][1]["pairs"]["evil / sycophancy"] > 0.9
    assert "| layer | evil / sycophancy | evil / humour | sycophancy / humour | random 5-95% |" in written["table"]
    assert (tmp_path / "cosines.html").exists()


# ---------------------------------------------------------------------------------------------------------------------
# steering: the trait rate of the vector beside random vectors at the same relative coefficient


class SaysWord:
    """Scores 100 when the reply says ``word`` at least ``times`` times, else 0 (a rule trait)."""

    def __init__(self, word, times=3):
        self.word, self.times = word, times

    @property
    def judge_id(self) -> str:
        return f"test:says:{self.word}:{self.times}"

    def score(self, rubric, items):
        return [100.0 if answer.count(self.word) >= self.times else 0.0 for _, answer in items]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_steering_controls_planted_direction_ranks_first(name, tmp_path):
    from persona_lens.experiments.steering_sweep import SteeringCell, SteeringSweepConfig, run_steering_controls
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.schema import load_trait

    model = load_cached(name)
    token = model.tokenizer.encode("Z", add_special_tokens=False)[-1]  # the tiny models' tokens are bytes
    word = model.tokenizer.decode([token])
    layer = model.cfg.n_layers  # the last block's output: the unembedding reads it (after the final norm)
    unembed = model.hf_model.get_output_embeddings().weight[token].detach().float()
    planted = _planted(model, torch.zeros(model.cfg.d_model))
    planted.vectors[layer] = unembed / unembed.norm()
    cell = SteeringCell(layer, 200.0, 20.0, 0, None, None, None, None, 0)
    config = SteeringSweepConfig(n_questions=4, n_samples=1, max_new_tokens=4, temperature=1.0, batch_size=8)
    other = _stranger(model, name="other")
    result = run_steering_controls(
        model,
        planted,
        load_trait("shouting"),
        cell,
        judge=SaysWord(word),
        coherence_judge=RuleJudge("coherence"),
        config=config,
        out_dir=tmp_path,
        controls=5,
        against=[other],
        progress=False,
    )
    rate = result.baselines["trait_rate"]
    assert rate.value == 1.0 and rate.percentile == 100.0 and rate.beats_random, rate.summary()
    assert rate.flipped == 0.0 and rate.margin_over_others() > 0.5, rate.summary()
    # A random vector of the same norm at the same coefficient is one of the random crowd: in the middle.
    stranger = result.cells["random0"]["trait_rate"]
    assert stranger == 0.0 and 5 <= type(rate)(**{**rate.__dict__, "value": stranger}).percentile <= 95
    saved = json.loads((tmp_path / "controls.json").read_text())
    assert saved["baselines"]["trait_rate"]["random_n"] == 5 and set(saved["cells"]) == {
        "vector",
        "flipped",
        "other",
        *(f"random{i}" for i in range(5)),
    }
    assert saved["cells"]["other"]["coef_raw"] == pytest.approx(200.0 * 1.0 / float(other.vectors[layer].norm()))


def test_cli_sweep_reports_its_controls_at_the_chosen_cell(tmp_path, capsys):
    from persona_lens.cli.sweep import main

    model = load_cached("tiny-llama")
    vector, other, _ = _save(model, tmp_path)
    argv = [
        "--trait",
        "shouting",
        "--model",
        "tiny-llama",
        "--vector",
        str(vector),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--layers",
        "2",
        "--coefficients",
        "1",
        "--questions",
        "2",
        "--max-new-tokens",
        "4",
        "--coherence-threshold",
        "0",
        "--judge-cache",
        str(tmp_path / "cache.sqlite"),
        "--coherence",
        "rule",
        "--trait-threshold",
        "0",
        "--controls",
        "2",
        "--against",
        str(other),
    ]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    controls = result["controls"]
    assert controls["layer"] == 2 and set(controls["cells"]) == {"vector", "random0", "random1", "flipped", "other"}
    assert len(controls["baselines"]["trait_rate"]["random"]) == 2
    assert controls["cells"]["vector"]["n"] == 2
    run = tmp_path / "run" / "sweep-none-response"
    assert (run / "controls.json").exists() and (run / "controls.html").exists()
    assert main(argv) == 0  # a rerun generates nothing and prints the summary lines
    assert "trait_rate = " in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# preventative steering: the same finetune with random vectors of the vector's norms


def test_control_interventions_keep_kind_layer_coef_and_norms():
    from persona_lens.experiments.finetune import TrainingIntervention, control_interventions

    model = load_cached("tiny-llama")
    vector = _stranger(model, name="evil")
    runs = control_interventions(
        [
            TrainingIntervention("steer", vector, [2, 3], coef=4.0, incremental=True),
            TrainingIntervention("ablate", vector, 1),
        ],
        3,
        seed=5,
    )
    assert len(runs) == 3 and all(len(run) == 2 for run in runs)
    for i, (steer, ablate) in enumerate(runs):
        assert (steer.kind, steer.layer, steer.coef, steer.incremental) == ("steer", [2, 3], 4.0, True)
        assert ablate.kind == "ablate" and ablate.layer == 1
        torch.testing.assert_close(steer.vector.vectors.norm(dim=-1), vector.vectors.norm(dim=-1))
        torch.testing.assert_close(steer.vector.vectors, random_like(vector.vectors, 3, seed=5)[i])
        cos = torch.nn.functional.cosine_similarity(steer.vector.vectors, vector.vectors, dim=-1)
        assert float(cos.abs().max()) < 0.6
    assert runs[0][0].describe()["vector_sha256"] != runs[1][0].describe()["vector_sha256"]


def test_cli_finetune_writes_random_control_runs(monkeypatch, tmp_path, capsys):
    from persona_lens.core.vectors import load_vector, vector_digest

    model = load_cached("tiny-llama")
    vector, _, _ = _save(model, tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [*make_messages(q), {"role": "assistant", "content": "OK BOSS"}]}) + "\n"
            for q in ("hi", "name a fruit")
        )
    )
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
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--steer-vector",
        str(vector),
        "--steer-layer",
        "2",
        "--steer-coef",
        "3",
        "--controls",
        "2",
        "--control-seed",
        "1",
        "--json",
    ]
    assert _main(monkeypatch, argv, "persona_lens.cli.finetune") == 0
    summary = json.loads(capsys.readouterr().out)
    assert [c["output_dir"] for c in summary["controls"]] == [str(tmp_path / f"ft-random{i}") for i in range(2)]
    expected = random_like(load_vector(vector).vectors, 2, seed=1)

    for i, control in enumerate(summary["controls"]):
        (described,) = control["interventions"]
        assert described["coef"] == 3 and described["layer"] == 2 and described["trait"] == f"random{i}"
        assert described["vector_sha256"] == vector_digest(expected[i])
        assert json.loads((tmp_path / f"ft-random{i}" / "finetune.json").read_text())["steps"] == 1
    assert (
        _main(
            monkeypatch,
            ["finetune", "--model", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "x"), "--controls", "1"],
            "persona_lens.cli.finetune",
        )
        == 2
    )
