"""``monitor sweep`` and ``monitor tokens``: ProjectionSweepResult / TokenProjections save and load their files, and
the loaded results redraw every figure (and the token page) without the model."""

from __future__ import annotations

import json

import pytest
import torch

from persona_lens.core.results import ResultFileError
from persona_lens.experiments import monitor
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from persona_lens.viz.projections import monitor_sweep_figures, token_projection_page
from tests.conftest import load_cached
from tests.experiments.test_monitor import PROMPTS, _vectors
from tests.results.helpers import figure_json, folder_bytes


@pytest.fixture(scope="module")
def sweep():
    model = load_cached("tiny-llama")
    trait = load_trait("shouting")
    vectors = _vectors(model, seed=3)
    against = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(9))
    prompts = monitor.many_shot_prompts(trait, (0, 1, 2), n_questions=2)
    return monitor.run_projection_sweep(
        model,
        prompts,
        vectors,
        2,
        RuleJudge("shouting"),
        trait.rubric,
        n_samples=2,
        max_new_tokens=4,
        temperature=1.0,
        seed=5,
        kind="many_shot",
        controls=5,
        against=[against],
        progress=False,
    )


def test_sweep_save_then_load_gives_the_same_result_and_the_same_bytes(sweep, tmp_path):
    written = sweep.save(tmp_path / "a")
    assert [p.name for p in written] == ["many_shot_sweep.json"]
    loaded = monitor.ProjectionSweepResult.load(tmp_path / "a", "many_shot")
    assert loaded.prompts == sweep.prompts  # the messages themselves, not only their count
    assert [len(p.messages) for p in loaded.prompts] == [1, 1, 3, 3, 5, 5]
    assert json.dumps(loaded.to_json()) == json.dumps(sweep.to_json())
    assert loaded.rows == sweep.rows and loaded.against == sweep.against
    loaded.save(tmp_path / "b")
    assert folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "a")


def test_a_sweep_file_without_messages_still_loads(sweep, tmp_path):
    data = sweep.to_json()
    for prompt in data["prompts"]:
        del prompt["messages"]
    del data["against_projections"]
    (tmp_path / "system_sweep.json").write_text(json.dumps({**data, "kind": "system"}), encoding="utf-8")
    loaded = monitor.ProjectionSweepResult.load(tmp_path, "system")
    assert [p.message_count() for p in loaded.prompts] == [1, 1, 3, 3, 5, 5]
    assert all(p.messages == () for p in loaded.prompts)
    again = loaded.to_json()
    assert [p["n_messages"] for p in again["prompts"]] == [1, 1, 3, 3, 5, 5]
    assert again["correlations"] == data["correlations"] and again["baselines"] == data["baselines"]


def test_the_loaded_sweep_redraws_every_figure_without_a_model(sweep, tmp_path, monkeypatch):
    sweep.save(tmp_path)
    fresh = monitor_sweep_figures(sweep)
    assert set(fresh) == {("alpha", ""), ("alpha", ".controls"), ("vector1", ""), ("vector1", ".controls")}
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    assert figure_json(monitor_sweep_figures(monitor.ProjectionSweepResult.load(tmp_path, "many_shot"))) == figure_json(
        fresh
    )


def test_tokens_save_load_and_redraw_the_page_without_a_model(tmp_path, monkeypatch):
    model = load_cached("tiny-llama")
    traces = monitor.generate_with_projections(model, PROMPTS[:2], _vectors(model), 2, max_new_tokens=4)
    result = monitor.TokenProjections(model.cfg.model_name, 2, ["alpha", "vector1"], traces, tmp_path / "t.html")
    assert [p.name for p in result.save()] == ["t.json"]
    page = token_projection_page(result, show_prompt=False)
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = monitor.TokenProjections.load(tmp_path / "t.html")
    assert json.dumps(loaded.to_json()) == json.dumps(result.to_json())
    assert token_projection_page(loaded, show_prompt=False) == page and "Projection on vector1" in page
    before = (tmp_path / "t.json").read_bytes()
    loaded.save()
    assert (tmp_path / "t.json").read_bytes() == before


def test_a_folder_without_the_sweep_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ResultFileError, match=r"system_sweep\.json: no such file.*rerun the command"):
        monitor.ProjectionSweepResult.load(tmp_path, "system")
    with pytest.raises(ResultFileError, match=r"t\.json: no such file"):
        monitor.TokenProjections.load(tmp_path / "t.html")


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while redrawing from the folder")
