"""``space build``, ``space drift`` and ``space cap-eval``: SpaceReport / DriftReport / CapEvalResult save and load
their files (alignment.json, drift.json, cap_eval.json), and the loaded reports redraw the variance, role-map and
drift figures without the model (the role map from its stored PC positions, trait vectors included)."""

from __future__ import annotations

import json

import pytest
import torch

import persona_lens.experiments.space as sp
from persona_lens.core.results import ResultFileError
from persona_lens.viz.space import drift_figures, space_figures
from tests.conftest import load_cached
from tests.experiments.test_space import _built_space
from tests.results.helpers import figure_json, folder_bytes

MESSAGES = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": "Arr matey, now I be a pirate."},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space")
    model = load_cached("tiny-llama")
    roles, judges, space = _built_space(model, folder, cap_controls=2)
    trait = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    report = sp.space_report(space, {"shouting": trait}, layer=2, k_random=5)
    return model, roles, judges, space, report, folder / "s"


def test_build_report_round_trips_and_redraws_the_role_map_with_the_traits(built, tmp_path, monkeypatch):
    _, _, _, space, report, out = built
    assert [p.name for p in report.save(out)] == ["alignment.json"]
    fresh = space_figures(report)
    assert set(fresh) == {"variance.html", "roles_layer2.html"}
    assert set(report.role_map["traits"]) == {"shouting"} and report.role_map["names"][-1] == space.default_role
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = sp.SpaceReport.load(out)
    assert json.dumps(loaded.alignment) == json.dumps(report.alignment)  # NaN: a trait row has no other vectors
    assert figure_json(space_figures(loaded)) == figure_json(fresh)
    loaded.save(tmp_path)
    assert folder_bytes(tmp_path) == {"alignment.json": (out / "alignment.json").read_bytes()}


def test_an_old_alignment_file_gets_its_role_map_from_the_space(built, tmp_path):
    _, _, _, space, report, out = built
    old = {k: v for k, v in report.alignment.items() if k != "role_map"}
    (tmp_path / "alignment.json").write_text(json.dumps(old), encoding="utf-8")
    (tmp_path / "space.safetensors").write_bytes((out / "space.safetensors").read_bytes())
    loaded = sp.SpaceReport.load(tmp_path)
    layer = sp.space_report(space, layer=None, k_random=5).role_map["layer"]
    assert loaded.role_map == sp.space_report(space, layer=layer, k_random=5).role_map
    assert loaded.role_map["traits"] == {}  # the trait vectors were not saved
    assert f"roles_layer{layer}.html" in space_figures(loaded)


def test_drift_report_round_trips_and_redraws_without_a_model(built, tmp_path, monkeypatch):
    model, _, _, space, _, _ = built
    result = sp.project_conversation(model, space, MESSAGES, layer=1, k_random=5)
    alone = sp.project_conversation(model, space, MESSAGES, layer=1, k_random=5, alone=True)
    report = sp.drift_report(result, space.model_name, alone=alone, context=sp.compare_drift(result, alone, k_random=5))
    assert [p.name for p in report.save(tmp_path / "a")] == ["drift.json"]
    fresh = drift_figures(report)
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = sp.DriftReport.load(tmp_path / "a")
    assert json.dumps(loaded.data) == json.dumps(report.data) and len(loaded.data["turns_alone_at_layer"]) == 2
    assert figure_json(drift_figures(loaded)) == figure_json(fresh)
    loaded.save(tmp_path / "b")
    assert folder_bytes(tmp_path / "b") == folder_bytes(tmp_path / "a")


def test_cap_eval_round_trips(built, tmp_path, monkeypatch):
    model, roles, judges, space, _, _ = built
    settings = sp.calibrate_cap(space, [1, 2], percentile=50.0, k_random=2)
    config = sp.SpaceConfig(temperature=0.0, max_new_tokens=4, batch_size=4)
    result = sp.evaluate_capping(model, roles, settings, judges=judges, config=config, out_dir=tmp_path / "e")
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = sp.CapEvalResult.load(tmp_path / "e")
    assert json.dumps(loaded.to_json()) == json.dumps(result.to_json())
    before = (tmp_path / "e" / "cap_eval.json").read_bytes()
    loaded.save(tmp_path / "e")
    assert (tmp_path / "e" / "cap_eval.json").read_bytes() == before


def test_folders_without_the_reports_name_the_file_and_the_fix(tmp_path):
    for cls, name in ((sp.SpaceReport, "alignment"), (sp.DriftReport, "drift"), (sp.CapEvalResult, "cap_eval")):
        with pytest.raises(ResultFileError, match=rf"{name}\.json: no such file.*rerun the command"):
            cls.load(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while redrawing from the folder")
