"""``sweep``: SteeringSweepResult / SteeringControls save and load their folder, and the loaded result redraws the
steering curves and the controls figure without the model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import persona_lens.experiments.steering_sweep as S
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from persona_lens.viz.steering import sweep_figures
from tests.conftest import load_cached
from tests.experiments.test_steering_sweep import _sweep, _vector
from tests.results.helpers import figure_json, folder_bytes

REPORT = ["samples.md", "scored.jsonl", "sweep.csv", "sweep.json"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    model = load_cached("tiny-llama")
    vector = _vector(model)
    result = _sweep(model, vector, folder)
    cell = result.chosen or result.cells[-1]
    controls = S.run_steering_controls(
        model,
        vector,
        load_trait("shouting"),
        cell,
        judge=RuleJudge("shouting"),
        coherence_judge=RuleJudge("coherence"),
        config=result.config,
        out_dir=folder,
        controls=3,
        progress=False,
    )
    return folder, result, controls


def test_the_run_writes_exactly_what_save_writes(swept, tmp_path):
    folder, result, controls = swept
    written = result.save(tmp_path)
    assert sorted(p.name for p in written.values()) == REPORT
    controls.save(tmp_path)
    mine = folder_bytes(tmp_path)
    theirs = folder_bytes(folder)
    assert {name: theirs[name] for name in mine} == mine


def test_load_gives_back_the_result_and_saving_it_again_the_same_bytes(swept, tmp_path):
    folder, result, controls = swept
    loaded = S.SteeringSweepResult.load(folder)
    assert loaded.to_json() == result.to_json() and loaded.scored == result.scored
    assert loaded.chosen == result.chosen and loaded.config == result.config
    loaded_controls = S.SteeringControls.load(folder)
    assert json.dumps(loaded_controls.to_json()) == json.dumps(controls.to_json())  # NaN where a control is unscored
    shutil.copy(folder / "responses.jsonl", tmp_path / "responses.jsonl")
    loaded.save(tmp_path)
    loaded_controls.save(tmp_path)
    assert folder_bytes(tmp_path) == {k: v for k, v in folder_bytes(folder).items() if k in folder_bytes(tmp_path)}
    assert set(folder_bytes(tmp_path)) == {*REPORT, "controls.json", "responses.jsonl"}


def test_the_loaded_result_redraws_every_figure_without_a_model(swept, monkeypatch):
    folder, result, controls = swept
    fresh = sweep_figures(result, controls)
    assert set(fresh) == {"sweep.html", "controls.html"}
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    redrawn = sweep_figures(S.SteeringSweepResult.load(folder), S.SteeringControls.load(folder))
    assert figure_json(redrawn) == figure_json(fresh)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while redrawing from the folder")
