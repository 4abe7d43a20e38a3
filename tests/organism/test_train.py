"""The organism's training run: two stages, and stage 2 alone on saved stage-1 weights gives the same model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from persona_lens.organism.train import TrainConfig, train

SMALL = {
    "steps": 3,
    "multi_turn_steps": 3,
    "batch_size": 4,
    "warmup": 2,
    "d_model": 32,
    "n_heads": 2,
    "d_mlp": 64,
    "n_layers": 2,
}


def test_stage_two_on_saved_stage_one_weights_equals_one_run_from_scratch(tmp_path):
    _, whole = train(TrainConfig(**SMALL), out_dir=tmp_path / "whole", log_every=1)
    train(TrainConfig(**{**SMALL, "multi_turn_steps": 0}), out_dir=tmp_path / "stage1", log_every=1)
    _, resumed = train(TrainConfig(**SMALL), out_dir=tmp_path / "resumed", log_every=1, stage1_from=tmp_path / "stage1")
    a, b = load_file(tmp_path / "whole/model.safetensors"), load_file(tmp_path / "resumed/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stage1 = load_file(tmp_path / "stage1/model.safetensors")
    assert not all(torch.equal(a[k], stage1[k]) for k in a)  # stage 2 trained
    assert (
        whole["stage2"]["loss_history"] == resumed["stage2"]["loss_history"]
        and len(whole["stage2"]["loss_history"]) == 3
    )
    assert resumed["stage1"]["loaded_from"] == str(tmp_path / "stage1")
    assert resumed["fingerprint"] == whole["fingerprint"] == whole["stage1"]["fingerprint"]
    saved = json.loads((tmp_path / "resumed/training.json").read_text())
    assert saved["config"]["multi_turn_steps"] == 3 and saved["final_loss"] == resumed["stage2"]["final_loss"]
    for name in ("n_parameters", "train_seconds", "loss_history", "fingerprint"):  # what test_model reads
        assert saved[name] is not None, name
    with pytest.raises(FileNotFoundError, match="needs model.safetensors and training.json"):
        train(TrainConfig(**SMALL), out_dir=None, stage1_from=tmp_path / "nothing")
