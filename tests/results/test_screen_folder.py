"""``screen``: ScreenResult.save / load round-trip the report files of the folder (ranked samples, report), and the
loaded result redraws every histogram and comparison figure from the folder's scores files without the model."""

from __future__ import annotations

import json

import pytest
import torch

from persona_lens.core.results import ResultFileError
from persona_lens.experiments.screen import ScreenConfig
from persona_lens.experiments.screen_result import ScreenResult, screen_datasets
from persona_lens.viz.projections import screen_figures
from tests.conftest import load_cached
from tests.experiments.test_screen import QA, _record, _vectors, _write
from tests.results.helpers import figure_json, folder_bytes

REPORT = [
    "loud.ranked.alpha.csv",
    "loud.ranked.alpha.jsonl",
    "loud.ranked.beta.csv",
    "loud.ranked.beta.jsonl",
    "normal.ranked.alpha.csv",
    "normal.ranked.alpha.jsonl",
    "normal.ranked.beta.csv",
    "normal.ranked.beta.jsonl",
    "screen_report.json",
]


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screen")
    model = load_cached("tiny-llama")
    normal = _write(folder / "normal.jsonl", [_record(q, a) for q, a in QA])
    loud = _write(folder / "loud.jsonl", [_record(q, a.upper() + "!!!") for q, a in QA] + ["{broken"])
    out = folder / "out"
    result = screen_datasets(
        model,
        {"normal": normal, "loud": loud},
        _vectors(model),
        out,
        ScreenConfig(layer=2, max_new_tokens=4, controls=5),
        top=3,
        progress=False,
    )
    return out, result


def test_save_then_load_gives_the_same_result_and_the_same_bytes(screened):
    out, result = screened
    written = result.save(out)
    assert sorted(p.name for p in written) == REPORT
    before = folder_bytes(out)
    loaded = ScreenResult.load(out)
    assert loaded == result
    assert loaded.comparison["alpha"]["auroc_dp"]["loud"] == result.comparison["alpha"]["auroc_dp"]["loud"]
    loaded.save(out)
    assert folder_bytes(out) == before
    report = json.loads((out / "screen_report.json").read_text())
    assert report["datasets"]["loud"]["n_bad"] == 1 and report["top"] == 3
    assert len(report["datasets"]["loud"]["files"]) == 1 + 2 * (2 + 1)  # scores, then per trait 2 ranked + 1 figure


def test_the_loaded_result_redraws_every_figure_without_a_model(screened, monkeypatch):
    out, result = screened
    result.save(out)
    fresh = screen_figures(result, out, bins=10)
    assert set(fresh) == {
        "normal.hist.alpha.html",
        "normal.hist.beta.html",
        "loud.hist.alpha.html",
        "loud.hist.beta.html",
        *(
            f"comparison.{t}.{k}{c}.html"
            for t in ("alpha", "beta")
            for k in ("dp", "dp_last_prompt")
            for c in ("", ".controls")
        ),
    }
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    assert figure_json(screen_figures(ScreenResult.load(out), out, bins=10)) == figure_json(fresh)


def test_a_folder_without_the_report_names_the_file_and_the_fix(screened, tmp_path):
    with pytest.raises(ResultFileError, match=r"screen_report\.json: no such file.*rerun the command"):
        ScreenResult.load(tmp_path)
    _, result = screened
    moved = ScreenResult(
        result.model,
        result.layer,
        {n: {**s, "data": str(tmp_path / "gone.jsonl")} for n, s in result.datasets.items()},
        result.comparison,
    )
    with pytest.raises(ResultFileError, match=r"gone\.jsonl is not a file: rerun the screen"):
        moved.save(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while redrawing from the folder")
