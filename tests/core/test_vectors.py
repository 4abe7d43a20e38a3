"""Persona vectors: mean difference, unit/incremental/cosine maths, compatibility checks, files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from persona_lens.core.vectors import (
    FORMAT,
    LAYER_CONVENTION,
    PersonaVector,
    VectorFileError,
    VectorMismatchError,
    cosine_similarity_by_layer,
    cosine_similarity_matrix,
    encode_metadata,
    export_authors_pt,
    import_authors_pt,
    load_vector,
    mean_difference,
    save_vector,
    trait_names,
    unit_directions,
    unit_rows,
    unit_vectors_by_layer,
)

N_LAYERS, D_MODEL = 4, 64


def make_vector(seed: int = 0, n_layers: int = N_LAYERS, d_model: int = D_MODEL, **kwargs) -> PersonaVector:
    generator = torch.Generator().manual_seed(seed)
    fields = dict(trait="evil", model_name="tiny-llama", positions="response", n_positive=7, n_negative=5)
    fields.update(kwargs)
    return PersonaVector(vectors=torch.randn(n_layers + 1, d_model, generator=generator), **fields)


@dataclass
class FakeCfg:
    model_name: str
    n_layers: int
    d_model: int


@dataclass
class FakeModel:
    cfg: FakeCfg


# ---------------------------------------------------------------------------------------------------------------
# maths


def test_mean_difference_matches_numpy():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(9, N_LAYERS + 1, D_MODEL)).astype(np.float32)
    neg = rng.normal(loc=0.5, size=(6, N_LAYERS + 1, D_MODEL)).astype(np.float32)
    expected = pos.astype(np.float64).mean(axis=0) - neg.astype(np.float64).mean(axis=0)
    got = mean_difference(torch.from_numpy(pos), torch.from_numpy(neg))
    assert got.dtype == torch.float32
    assert got.shape == (N_LAYERS + 1, D_MODEL)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_mean_difference_is_fp32_for_half_inputs():
    pos = torch.randn(4, 3, 8).to(torch.bfloat16)
    neg = torch.randn(5, 3, 8).to(torch.bfloat16)
    got = mean_difference(pos, neg)
    assert got.dtype == torch.float32
    expected = pos.double().numpy().mean(axis=0) - neg.double().numpy().mean(axis=0)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_mean_difference_accepts_precomputed_means():
    pos, neg = torch.randn(10, 3, 8), torch.randn(4, 3, 8)
    direct = mean_difference(pos, neg)
    precomputed = mean_difference((pos.mean(0), 10), (neg.mean(0), 4))
    torch.testing.assert_close(precomputed, direct)


def test_mean_difference_rejects_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        mean_difference(torch.randn(3, 4, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match="no negative samples"):
        mean_difference(torch.randn(3, 4, 8), torch.randn(0, 4, 8))
    with pytest.raises(ValueError, match="n_samples, layer, d_model"):
        mean_difference(torch.randn(4, 8), torch.randn(3, 4, 8))


def test_from_activations_records_counts_and_settings():
    pos, neg = torch.randn(9, N_LAYERS + 1, D_MODEL), torch.randn(6, N_LAYERS + 1, D_MODEL)
    vec = PersonaVector.from_activations("evil", "tiny-llama", pos, neg, "prompt", {"threshold": 50})
    assert (vec.n_positive, vec.n_negative) == (9, 6)
    assert (vec.n_layers, vec.d_model) == (N_LAYERS, D_MODEL)
    assert vec.positions == "prompt" and vec.settings == {"threshold": 50}
    torch.testing.assert_close(vec.vectors, pos.mean(0) - neg.mean(0))
    assert vec.created and vec.library_version


def test_post_init_validates():
    with pytest.raises(ValueError, match="positions"):
        make_vector(positions="everything")
    with pytest.raises(ValueError, match="JSON"):
        make_vector(settings={"bad": object()})
    with pytest.raises(ValueError, match="n_positive"):
        make_vector(n_positive=-1)
    with pytest.raises(ValueError, match="shape"):
        PersonaVector("evil", "m", torch.randn(3, 4, 5))


def test_at_checks_range():
    vec = make_vector()
    assert torch.equal(vec.at(2), vec.vectors[2])
    with pytest.raises(ValueError, match="out of range"):
        vec.at(N_LAYERS + 1)
    with pytest.raises(ValueError, match="out of range"):
        vec.at(-1)


def test_unit_and_norms():
    vec = make_vector()
    vec.vectors[3] = 0.0
    expected_norms = np.linalg.norm(vec.vectors.numpy().astype(np.float64), axis=1)
    np.testing.assert_allclose(vec.norms().numpy(), expected_norms, rtol=1e-6)
    units = vec.unit()
    assert units.shape == vec.vectors.shape
    assert not torch.isnan(units).any()
    assert torch.equal(units[3], torch.zeros(D_MODEL))
    for layer in (0, 1, 2, 4):
        np.testing.assert_allclose(units[layer].norm().item(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(
            vec.unit(layer).numpy(), vec.vectors[layer].numpy() / expected_norms[layer], rtol=1e-5, atol=1e-7
        )
    assert torch.equal(vec.unit(3), torch.zeros(D_MODEL))


def test_zero_rows_stay_zero_in_bulk_and_are_refused_as_directions():
    rows = torch.randn(3, D_MODEL)
    rows[1] = 0.0
    units = unit_rows(rows)
    assert torch.equal(units[1], torch.zeros(D_MODEL))
    torch.testing.assert_close(units[[0, 2]], rows[[0, 2]] / rows[[0, 2]].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(unit_rows(rows[0], names="v"), units[0])
    with pytest.raises(ValueError, match="'b' at layer 0 is a zero vector"):
        unit_rows(rows, names=["'a' at layer 0", "'b' at layer 0", "'c' at layer 0"])
    with pytest.raises(ValueError, match="zero vector"):
        unit_rows(torch.zeros(D_MODEL), names="the vector")


def test_unit_directions_and_unit_vectors_by_layer():
    vec = make_vector()
    vec.vectors[0] = 0.0  # like a last-prompt vector: both sides read the same token at layer 0
    torch.testing.assert_close(unit_directions([vec, vec.vectors[2]], 2), torch.stack([vec.unit(2)] * 2))
    with pytest.raises(ValueError, match="persona vector 'evil' at layer 0 is a zero vector"):
        unit_directions(vec, 0)
    by_layer = unit_vectors_by_layer([vec, vec.vectors])
    assert by_layer.shape == (2, N_LAYERS + 1, D_MODEL)
    torch.testing.assert_close(by_layer[0], vec.unit())
    assert torch.equal(by_layer[1, 0], torch.zeros(D_MODEL))


def test_vector_checks(tiny_model):
    good = PersonaVector(
        "alpha", tiny_model.cfg.model_name, torch.randn(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model)
    )
    with pytest.raises(ValueError, match="zero"):
        unit_directions(torch.zeros(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model), 1, tiny_model)
    with pytest.raises(ValueError, match="layer rows"):
        unit_directions(torch.ones(3, tiny_model.cfg.d_model), 1, tiny_model)
    assert trait_names([good, good, torch.ones(4)]) == ["alpha", "alpha#2", "vector2"]
    with pytest.raises(ValueError, match="full"):
        unit_vectors_by_layer(torch.ones(tiny_model.cfg.d_model))


def test_incremental_rows_and_cumulative_sum():
    vec = make_vector()
    inc = vec.incremental()
    assert torch.equal(inc[0], vec.vectors[0])
    for layer in range(1, N_LAYERS + 1):
        assert torch.equal(inc[layer], vec.vectors[layer] - vec.vectors[layer - 1])
    torch.testing.assert_close(inc.cumsum(dim=0), vec.vectors)
    assert not torch.equal(vec.vectors, inc)  # the vector itself is untouched


def test_cosine_similarity_matrix_matches_numpy():
    vecs = [make_vector(seed) for seed in range(3)]
    vecs.append(make_vector(3, trait="zero"))
    vecs[3].vectors.zero_()
    vecs.append(PersonaVector("anti", "tiny-llama", -2.5 * vecs[0].vectors))
    layer = 2
    got = cosine_similarity_matrix(vecs, layer)
    rows = np.stack([v.vectors[layer].numpy().astype(np.float64) for v in vecs])
    norms = np.linalg.norm(rows, axis=1)
    expected = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            if norms[i] > 0 and norms[j] > 0:
                expected[i, j] = rows[i] @ rows[j] / (norms[i] * norms[j])
    assert got.shape == (5, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(got[4, 0].item(), -1.0, atol=1e-6)
    assert torch.equal(got[3], torch.zeros(5))


def test_cosine_similarity_matrix_rejects_mixed_models():
    with pytest.raises(VectorMismatchError, match="d_model"):
        cosine_similarity_matrix([make_vector(0), make_vector(1, d_model=32)], 1)
    with pytest.raises(ValueError, match="out of range"):
        cosine_similarity_matrix([make_vector(0)], N_LAYERS + 1)


def test_cosine_similarity_by_layer():
    a, b = make_vector(0), make_vector(1)
    b.vectors[1] = 3.0 * a.vectors[1]
    b.vectors[2] = -a.vectors[2]
    b.vectors[4] = 0.0
    got = cosine_similarity_by_layer(a, b)
    x, y = a.vectors.numpy().astype(np.float64), b.vectors.numpy().astype(np.float64)
    denom = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    expected = np.where(denom > 0, (x * y).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert got[1].item() == pytest.approx(1.0, abs=1e-6)
    assert got[2].item() == pytest.approx(-1.0, abs=1e-6)
    assert got[4].item() == 0.0
    with pytest.raises(VectorMismatchError, match="shapes"):
        cosine_similarity_by_layer(a, make_vector(2, n_layers=5))


# ---------------------------------------------------------------------------------------------------------------
# compatibility


def test_check_compatible_with_real_tiny_models(tiny_model):
    cfg = tiny_model.cfg
    make_vector(n_layers=cfg.n_layers, d_model=cfg.d_model, model_name=cfg.model_name).check_compatible(tiny_model)
    wrong = make_vector(n_layers=cfg.n_layers, d_model=cfg.d_model + 1, model_name=cfg.model_name)
    with pytest.raises(VectorMismatchError) as info:
        wrong.check_compatible(tiny_model)
    message = str(info.value)
    assert f"({cfg.n_layers + 1}, {cfg.d_model + 1})" in message and f"({cfg.n_layers + 1}, {cfg.d_model})" in message
    assert "extract the vector again" in message
    other = make_vector(n_layers=cfg.n_layers, d_model=cfg.d_model, model_name="another-model")
    with pytest.raises(VectorMismatchError, match="allow_other_model"):
        other.check_compatible(tiny_model)
    other.check_compatible(tiny_model, allow_other_model=True)


def test_check_compatible_errors():
    vec = make_vector()
    vec.check_compatible(FakeModel(FakeCfg("tiny-llama", N_LAYERS, D_MODEL)))
    with pytest.raises(VectorMismatchError, match="n_layers=6"):
        vec.check_compatible(FakeModel(FakeCfg("tiny-llama", 6, D_MODEL)))
    other = FakeModel(FakeCfg("tiny-llama-finetuned", N_LAYERS, D_MODEL))
    with pytest.raises(VectorMismatchError, match="allow_other_model=True"):
        vec.check_compatible(other)
    vec.check_compatible(other, allow_other_model=True)
    with pytest.raises(VectorMismatchError, match="d_model=128"):  # shape errors are never waived
        vec.check_compatible(FakeModel(FakeCfg("x", N_LAYERS, 128)), allow_other_model=True)
    vec.check_compatible(FakeCfg("tiny-llama", N_LAYERS, D_MODEL))  # a bare cfg works too


def test_to_keeps_metadata():
    vec = make_vector(settings={"a": 1})
    half = vec.to(dtype=torch.float16)
    assert half.vectors.dtype == torch.float16
    assert (half.trait, half.created, half.settings, half.n_positive) == (vec.trait, vec.created, {"a": 1}, 7)
    assert vec.vectors.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# our file format


def test_save_load_round_trip_is_bit_exact(tmp_path: Path):
    vec = make_vector(settings={"judge": {"name": "claude", "threshold": 50}, "layers": [1, 2]}, positions="prompt")
    vec.vectors[0, 0] = 1e-38  # denormal-ish and awkward values survive
    vec.vectors[1, 1] = -0.0
    path = save_vector(vec, tmp_path / "sub" / "evil.safetensors")
    loaded = load_vector(path)
    assert torch.equal(loaded.vectors.view(torch.int32), vec.vectors.view(torch.int32))
    assert loaded.vectors.dtype == torch.float32
    for name in (
        "trait",
        "model_name",
        "positions",
        "n_positive",
        "n_negative",
        "settings",
        "created",
        "library_version",
    ):
        assert getattr(loaded, name) == getattr(vec, name), name
    assert sorted(p.name for p in path.parent.iterdir()) == ["evil.safetensors"]  # no temp file left


def test_saved_header_metadata(tmp_path: Path):
    vec = make_vector(settings={"k": "v"})
    path = save_vector(vec, tmp_path / "v.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        assert list(handle.keys()) == ["vectors"]
    assert meta["format"] == FORMAT and meta["format_version"] == "1"
    assert meta["layer_convention"] == LAYER_CONVENTION
    assert (meta["trait"], meta["model_name"], meta["positions"]) == ("evil", "tiny-llama", "response")
    assert (meta["n_layers"], meta["d_model"], meta["n_positive"], meta["n_negative"]) == ("4", "64", "7", "5")
    assert json.loads(meta["settings"]) == {"k": "v"}


def test_save_converts_to_fp32_and_refuses_nan(tmp_path: Path):
    vec = make_vector().to(dtype=torch.bfloat16)
    loaded = load_vector(save_vector(vec, tmp_path / "a.safetensors"))
    assert loaded.vectors.dtype == torch.float32
    assert torch.equal(loaded.vectors, vec.vectors.float())
    bad = make_vector()
    bad.vectors[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_vector(bad, tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


def _write_raw(path: Path, tensor: torch.Tensor, meta: dict[str, str]) -> Path:
    safetensors.torch.save_file({"vectors": tensor}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "something.else"}, "field 'format'"),
        ({"format_version": "2"}, "format_version.*upgrade"),
        ({"format_version": "one"}, "format_version.*integer"),
        ({"n_layers": "7"}, "shape"),
        ({"d_model": "65"}, "shape"),
        ({"positions": "all"}, "field 'positions'"),
        ({"settings": "{not json"}, "field 'settings'"),
        ({"layer_convention": "0 = block 1"}, "layer_convention"),
        ({"n_positive": "-3"}, "n_positive"),
    ],
)
def test_load_rejects_bad_metadata(tmp_path: Path, change: dict[str, str], match: str):
    vec = make_vector()
    meta = encode_metadata(vec) | change
    path = _write_raw(tmp_path / "bad.safetensors", vec.vectors, meta)
    with pytest.raises(VectorFileError, match=match) as info:
        load_vector(path)
    assert str(path) in str(info.value)


def test_load_rejects_missing_fields_and_bad_files(tmp_path: Path):
    vec = make_vector()
    meta = encode_metadata(vec)
    del meta["trait"]
    with pytest.raises(VectorFileError, match="'trait' is missing"):
        load_vector(_write_raw(tmp_path / "a.safetensors", vec.vectors, meta))
    with pytest.raises(VectorFileError, match="no persona_lens metadata"):
        load_vector(_write_raw(tmp_path / "b.safetensors", vec.vectors, {}))
    with pytest.raises(VectorFileError, match="float32"):
        load_vector(_write_raw(tmp_path / "c.safetensors", vec.vectors.double(), encode_metadata(vec)))
    safetensors.torch.save_file({"other": vec.vectors}, str(tmp_path / "d.safetensors"), encode_metadata(vec))
    with pytest.raises(VectorFileError, match="no tensor named 'vectors'"):
        load_vector(tmp_path / "d.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"this is not safetensors")
    with pytest.raises(VectorFileError, match="e.safetensors"):
        load_vector(tmp_path / "e.safetensors")
    with pytest.raises(FileNotFoundError):
        load_vector(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# the authors' .pt layout


def test_authors_pt_round_trip(tmp_path: Path):
    vec = make_vector()
    path = export_authors_pt(vec, tmp_path / "evil_response_avg_diff.pt")
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, torch.Tensor) and raw.dtype == torch.float32
    assert torch.equal(raw, vec.vectors)
    back = import_authors_pt(path, "evil", "tiny-llama")
    assert torch.equal(back.vectors, vec.vectors)
    assert (back.trait, back.model_name, back.positions, back.n_layers) == ("evil", "tiny-llama", "response", 4)
    assert back.settings["source_file"] == "evil_response_avg_diff.pt"


def test_authors_pt_positions_from_file_name_and_dict(tmp_path: Path):
    vec = make_vector()
    torch.save(vec.vectors, tmp_path / "evil_prompt_last_diff.pt")
    assert import_authors_pt(tmp_path / "evil_prompt_last_diff.pt", "evil", "m").positions == "last_prompt"
    torch.save(vec.vectors, tmp_path / "vector.pt")
    assert import_authors_pt(tmp_path / "vector.pt", "evil", "m").positions == "response"
    assert import_authors_pt(tmp_path / "vector.pt", "evil", "m", positions="prompt").positions == "prompt"

    bundle = {"response_avg_diff": vec.vectors, "prompt_avg_diff": 2 * vec.vectors, "prompt_last_diff": -vec.vectors}
    torch.save(bundle, tmp_path / "bundle.pt")
    got = import_authors_pt(tmp_path / "bundle.pt", "evil", "m", key="prompt_avg_diff")
    assert torch.equal(got.vectors, 2 * vec.vectors) and got.positions == "prompt"
    assert import_authors_pt(tmp_path / "bundle.pt", "evil", "m").positions == "response"
    with pytest.raises(VectorFileError, match="key 'nope'"):
        import_authors_pt(tmp_path / "bundle.pt", "evil", "m", key="nope")


@dataclass
class NotATensor:
    value: int


def test_authors_pt_rejects_pickles_and_bad_shapes(tmp_path: Path):
    torch.save(NotATensor(3), tmp_path / "pickle.pt")
    with pytest.raises(VectorFileError, match="weights_only"):
        import_authors_pt(tmp_path / "pickle.pt", "evil", "m")
    torch.save(torch.randn(3, 4, 5), tmp_path / "3d.pt")
    with pytest.raises(VectorFileError, match=r"\[n_layers \+ 1, d_model\]"):
        import_authors_pt(tmp_path / "3d.pt", "evil", "m")
    with pytest.raises(FileNotFoundError):
        import_authors_pt(tmp_path / "missing.pt", "evil", "m")
