"""``shift``: ShiftStudy.save / load round-trips the folder, and the loaded study redraws every figure."""

from __future__ import annotations

import json

import pytest
import torch

from persona_lens.core.results import ResultFileError
from persona_lens.experiments import shift
from persona_lens.judges.rule import RuleJudge
from persona_lens.viz.projections import shift_figures
from tests.conftest import load_cached
from tests.experiments.test_shift import PROMPTS, _moved_embedding, _vector
from tests.results.helpers import figure_json, folder_bytes


@pytest.fixture(scope="module")
def study():
    name = "tiny-llama"
    base = load_cached(name)
    vectors = [_vector(base), _vector(base, "other", seed=2)]
    models = [_moved_embedding(name, vectors[0], a) for a in (0.5, -1.0, 2.0)]
    fresh = shift.shift_study(
        base,
        models,
        PROMPTS,
        vectors,
        0,
        labels=["m1", "m2", "m3"],
        controls=7,
        judge=RuleJudge("shouting"),
        rubric="{question} {answer}",
        questions=["Hi", "Yo"],
        n_samples=1,
        max_new_tokens=4,
        evaluate_base=True,
    )
    fresh.trait = "shouting"
    return fresh


def test_save_then_load_gives_the_same_study_and_the_same_files(study, tmp_path):
    written = study.save(tmp_path / "a")
    assert sorted(p.name for p in written) == ["shift.csv", "shift.json"]
    loaded = shift.ShiftStudy.load(tmp_path / "a")
    assert json.dumps(loaded.to_json(with_texts=True)) == json.dumps(study.to_json(with_texts=True))
    assert (loaded.base_model, loaded.n_prompts, loaded.trait) == ("tiny-llama", len(PROMPTS), "shouting")
    for mine, theirs in zip(loaded.results, study.results, strict=True):
        assert mine.random_shift == pytest.approx(theirs.random_shift) and len(mine.random_shift) == 7
    loaded.save(tmp_path / "b")
    assert folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "a")


def test_the_loaded_study_redraws_every_figure_without_a_model(study, tmp_path, monkeypatch):
    study.save(tmp_path)
    fresh = shift_figures(study)
    assert set(fresh) == {("shouting", ""), ("shouting", ".controls"), ("other", ""), ("other", ".controls")}
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)  # no forward pass may run while redrawing
    assert figure_json(shift_figures(shift.ShiftStudy.load(tmp_path))) == figure_json(fresh)


def test_a_folder_without_the_result_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ResultFileError, match=r"shift\.json: no such file.*rerun the command"):
        shift.ShiftStudy.load(tmp_path)
    (tmp_path / "shift.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ResultFileError, match="not UTF-8"):
        shift.ShiftStudy.load(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while redrawing from the folder")
