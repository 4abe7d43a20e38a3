"""``finetune``: FinetuneResult's report file is ``finetune.json`` in the saved model's folder. load gives back what
the run reported (config and interventions included, also when a finished run is resumed), saving it again gives
the same bytes, and no model runs while loading. The weights are the Hugging Face folder's own files; ``finetune``
draws no figure."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import persona_lens
from persona_lens.core.results import ResultFileError
from persona_lens.experiments.finetune import FinetuneConfig, FinetuneResult, TrainingIntervention, finetune
from tests.experiments.test_finetune import _data, _random_vector
from tests.results.helpers import folder_bytes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    model = persona_lens.load_model("tiny-qwen2", device="cpu")  # private copy: training changes it
    records = [*_data(), {"messages": [{"role": "user", "content": "no reply"}]}]
    steer = TrainingIntervention("steer", _random_vector(model), layer=2, coef=1.0)
    config = FinetuneConfig(method="lora", lr=1e-2, epochs=2, batch_size=2, rank=4, alpha=8)
    result = finetune(model, records, config, output_dir=out, interventions=[steer], progress=False)
    return out, result, (model, records, config, steer)


def test_load_gives_back_the_report_and_saving_it_again_the_same_bytes(trained, tmp_path, monkeypatch):
    out, result, _ = trained
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    loaded = FinetuneResult.load(out)
    assert loaded.to_info() == result.to_info()
    assert loaded.to_json() == {**result.to_json(), "resumed_from_step": result.steps}  # loading trains nothing
    assert loaded.config["interventions"][0]["kind"] == "steer" and len(loaded.skipped) == 1
    assert loaded.base_model == "tiny-qwen2" and loaded.steps == 4 and len(loaded.losses) == 4
    loaded.save(tmp_path)
    assert folder_bytes(tmp_path) == {"finetune.json": (out / "finetune.json").read_bytes()}


def test_resuming_a_finished_run_reports_what_the_run_did(trained):
    out, result, (model, records, config, steer) = trained
    again = finetune(model, records, config, output_dir=out, interventions=[steer], resume=True, progress=False)
    assert dataclasses.replace(again, resumed_from_step=0) == result  # the config with its interventions, too


def test_a_folder_without_the_report_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ResultFileError, match=r"finetune\.json: no such file.*rerun the command"):
        FinetuneResult.load(tmp_path)


def _no_model(*args, **kwargs):
    raise AssertionError("a model ran while loading the folder")
