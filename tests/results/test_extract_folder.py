"""``extract``: ExtractionResult.save / load round-trip the folder (vectors, scores.jsonl, report.json, report.md;
the judged replies come back from the run's resumable responses.jsonl), with no model running while loading."""

from __future__ import annotations

import pytest
import torch

import persona_lens.experiments.extract as X
from persona_lens.core.results import ResultFileError
from persona_lens.core.vectors import encode_metadata, load_vector
from tests.conftest import load_cached
from tests.experiments.test_extract import _config, _run

REPORT = [
    "report.json",
    "report.md",
    "scores.jsonl",
    "vector_last_prompt.safetensors",
    "vector_prompt.safetensors",
    "vector_response.safetensors",
]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extract")
    return folder, _run(load_cached("tiny-llama"), folder, _config())


def _same_folder(mine, theirs):
    """Byte-identical, except that a .safetensors header's metadata order is not fixed by the format (a hash map):
    vectors are compared by their values and metadata."""
    assert sorted(p.name for p in mine.iterdir()) == REPORT
    for path in mine.iterdir():
        if path.suffix == ".safetensors":
            a, b = load_vector(path), load_vector(theirs / path.name)
            assert torch.equal(a.vectors, b.vectors) and encode_metadata(a) == encode_metadata(b)
        else:
            assert path.read_bytes() == (theirs / path.name).read_bytes(), path.name


def test_the_run_writes_exactly_what_save_writes(extracted, tmp_path):
    folder, result = extracted
    assert sorted(p.name for p in result.save(tmp_path)) == REPORT
    _same_folder(tmp_path, folder)


def test_load_gives_back_the_result_and_saving_it_again_the_same_bytes(extracted, tmp_path, monkeypatch):
    folder, result = extracted
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = X.ExtractionResult.load(folder)
    assert loaded.report == result.report and list(loaded.records) == list(result.records)
    for key, record in result.records.items():
        assert {k: loaded.records[key][k] for k in ("response", "response_ids", "trait_score", "coherence")} == {
            k: record[k] for k in ("response", "response_ids", "trait_score", "coherence")
        }
    for positions, vector in result.vectors.items():
        assert torch.equal(loaded.vectors[positions].vectors, vector.vectors)
        assert loaded.vectors[positions].n_positive == vector.n_positive == result.report["kept"]
    loaded.save(tmp_path)
    _same_folder(tmp_path, folder)


def test_a_folder_without_the_result_names_the_file_and_the_fix(extracted, tmp_path):
    folder, _ = extracted
    with pytest.raises(ResultFileError, match=r"report\.json: no such file.*rerun the command"):
        X.ExtractionResult.load(tmp_path)
    for name in ("report.json", "scores.jsonl"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ResultFileError, match=r"vector_response\.safetensors.*rerun the extraction"):
        X.ExtractionResult.load(tmp_path)
    for positions in X.REDUCTIONS:
        (tmp_path / X.vector_path(tmp_path, positions).name).write_bytes(X.vector_path(folder, positions).read_bytes())
    with pytest.raises(ResultFileError, match=r"responses\.jsonl lacks \d+ of the \d+ judged replies"):
        X.ExtractionResult.load(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while loading the folder")
