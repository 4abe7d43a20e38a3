"""Issue 15: numbers that enter the API are checked by persona_lens.core.validate, before any work, with the
argument's name; NaN and infinity never run (they used to: garbage replies, NaN weights, a disabled filter)."""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch

import persona_lens
from persona_lens.core.generation import generate
from persona_lens.core.hooks import cap, steer
from persona_lens.core.vectors import PersonaVector, VectorFileError, encode_metadata, load_vector, save_vector
from persona_lens.experiments.evaluate import GenerationSettings
from persona_lens.experiments.extract import ExtractConfig
from persona_lens.experiments.finetune import FinetuneConfig, TrainingIntervention
from tests.conftest import load_cached

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
def test_finite_refuses_non_finite_with_the_name(value):
    from persona_lens.core import validate

    with pytest.raises(validate.BadValue, match=r"coef must be a finite number"):
        validate.finite(value, "coef")


def test_counts_refuse_bools_zero_negative_and_floats():
    from persona_lens.core import validate

    assert validate.positive_int(3, "batch_size") == 3
    for bad in (0, -1, True, 2.0, "4", None):
        with pytest.raises(validate.BadValue, match="batch_size"):
            validate.positive_int(bad, "batch_size")
    assert validate.optional_positive_int(None, "n_pairs") is None
    with pytest.raises(validate.BadValue, match="n_pairs must be >= 1"):
        validate.optional_positive_int(-1, "n_pairs")


def test_layer_index_refuses_a_bool():
    from persona_lens.core import validate

    assert validate.layer_index(3) == 3
    with pytest.raises(validate.BadValue, match="layer must be an int layer, got bool True"):
        validate.layer_index(True)


def test_ranges():
    from persona_lens.core import validate

    assert validate.probability(0.5, "top_p") == 0.5
    with pytest.raises(validate.BadValue, match=r"top_p must be in \(0, 1\]"):
        validate.probability(0.0, "top_p", allow_zero=False)
    with pytest.raises(validate.BadValue, match="temperature must be >= 0"):
        validate.temperature(-1.0)
    with pytest.raises(validate.BadValue, match="trait_threshold must be a finite number"):
        validate.score_threshold(math.nan, "trait_threshold")
    assert validate.finite(torch.tensor(2.5), "x") == 2.5  # a 0-d tensor is a number


# --- the API's entry points -------------------------------------------------------------------------------------


@pytest.fixture
def model():
    return load_cached("tiny-llama")


def _vector(model) -> torch.Tensor:
    return torch.randn(model.cfg.n_layers + 1, model.cfg.d_model)


@pytest.mark.parametrize("coef", [math.nan, math.inf, 1e308 * 10])
def test_steer_refuses_a_non_finite_coefficient(model, coef):
    with pytest.raises(ValueError, match="coef must be a finite number"):
        steer(model, _vector(model), layer=1, coef=coef)


def test_steer_refuses_non_finite_per_row_coefficients_and_vectors(model):
    with pytest.raises(ValueError, match="coef holds NaN"):
        steer(model, _vector(model), layer=1, coef=torch.tensor([1.0, math.nan]))
    vector = _vector(model)
    vector[1, 0] = math.inf
    with pytest.raises(ValueError, match="the vector holds NaN or infinite values"):
        steer(model, vector, layer=1, coef=1.0)
    with pytest.raises(ValueError, match="max_value must be a finite number"):
        cap(model, _vector(model), layer=1, max_value=math.nan)


def test_steer_refuses_true_as_a_layer(model):
    """``layer=True`` used to steer layer 1."""
    with pytest.raises(ValueError, match="layer must be an int layer, got bool True"):
        steer(model, _vector(model), layer=True, coef=1.0)
    with pytest.raises(ValueError, match="got bool"):
        persona_lens.ablate(model, _vector(model), layer=[1, False])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": -1}, "batch_size must be >= 1"),  # used to return empty replies for every prompt
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"temperature": -1.0}, "temperature must be >= 0"),  # used to be silently greedy
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"top_p": math.nan}, "top_p must be a finite number"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_generate_checks_its_numbers(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, [[{"role": "user", "content": "hi"}]], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trait_threshold": math.nan}, "trait_threshold must be a finite number"),  # used to disable the filter
        ({"coherence_threshold": math.inf}, "coherence_threshold must be a finite number"),
        ({"temperature": math.nan}, "temperature must be a finite number"),  # used to hit an assert mid-run
        ({"batch_size": -1}, "batch_size must be >= 1"),
        ({"n_pairs": -1}, "n_pairs must be >= 1"),  # used as a Python slice: all pairs but the last
        ({"n_questions": 0}, "n_questions must be >= 1"),
        ({"n_samples": 0}, "n_samples must be >= 1"),
    ],
)
def test_extract_config_checks_its_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig(**kwargs)


def test_generation_settings_record_the_batch_size():
    """Batch size changes padding and so the sums behind a reply; a resume must compare it (issue 15 item 3)."""
    assert GenerationSettings(batch_size=4).generation_settings()["batch_size"] == 4


def test_finetune_settings_refuse_non_finite_numbers(model):
    with pytest.raises(ValueError, match="lr must be a finite number"):
        FinetuneConfig(lr=math.nan)
    with pytest.raises(ValueError, match="coef must be a finite number"):
        TrainingIntervention("steer", _vector(model), layer=1, coef=math.nan)


def _raw_vector_file(path, tensor, model_name="tiny-llama"):
    vec = PersonaVector("t", model_name, torch.zeros_like(tensor), "response")
    safetensors.torch.save_file({"vectors": tensor.contiguous()}, str(path), metadata=encode_metadata(vec))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_load_vector_refuses_non_finite_values(tmp_path, model, bad):
    """save_vector refused NaN, but load_vector accepted a file holding it (written by other tools)."""
    tensor = _vector(model)
    tensor[2, 3] = bad
    path = tmp_path / "v.safetensors"
    _raw_vector_file(path, tensor)
    with pytest.raises(VectorFileError, match=r"NaN or infinite values \(layer rows \[2\]\)"):
        load_vector(path)
    good = tmp_path / "good.safetensors"
    save_vector(PersonaVector("t", "tiny-llama", _vector(model), "response"), good)
    assert load_vector(good).vectors.isfinite().all()
