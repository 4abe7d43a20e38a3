"""Interop exports: llama.cpp control-vector GGUF, numpy .npz, and the ``export`` CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import persona_lens.cli as cli
from persona_lens.core.layers import hook_name
from persona_lens.core.vectors import PersonaVector, VectorFileError, export_authors_pt, load_vector, save_vector
from persona_lens.experiments.export import (
    export_control_vector,
    export_npz,
    import_npz,
    map_direction_to_layer,
    map_layer_to_direction,
    read_control_vector,
    read_control_vector_metadata,
)

N_LAYERS, D_MODEL = 6, 16


def make_vector(seed: int = 0) -> PersonaVector:
    generator = torch.Generator().manual_seed(seed)
    vec = PersonaVector(
        trait="sycophantic",
        model_name="tiny-llama",
        vectors=torch.randn(N_LAYERS + 1, D_MODEL, generator=generator),
        positions="response",
        n_positive=11,
        n_negative=13,
        settings={"threshold": 50, "judge": "claude"},
    )
    vec.vectors[4] = 0.0  # a zero layer must stay zero under normalize
    return vec


def field_types(reader: gguf.GGUFReader, key: str) -> list[gguf.GGUFValueType]:
    return reader.get_field(key).types


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp control vectors


def test_layer_mapping():
    assert map_layer_to_direction(2, N_LAYERS) == 1
    assert map_layer_to_direction(N_LAYERS, N_LAYERS) == N_LAYERS - 1
    assert map_direction_to_layer(1) == 2
    with pytest.raises(ValueError, match="embedding"):
        map_layer_to_direction(0, N_LAYERS)
    with pytest.raises(ValueError, match="direction.0"):
        map_layer_to_direction(1, N_LAYERS)
    with pytest.raises(ValueError, match="out of range"):
        map_layer_to_direction(N_LAYERS + 1, N_LAYERS)
    with pytest.raises(ValueError):
        map_direction_to_layer(0)
    # llama.cpp adds direction.N after its block loop index il = N, i.e. TransformerLens blocks.N.hook_resid_post
    for direction in range(1, N_LAYERS):
        assert hook_name(map_direction_to_layer(direction), N_LAYERS) == f"blocks.{direction}.hook_resid_post"


def test_gguf_layout_as_llama_cpp_expects(tmp_path: Path):
    vec = make_vector()
    path = tmp_path / "out" / "cv.gguf"
    mapping = export_control_vector(vec, path)
    assert mapping == {layer: layer - 1 for layer in range(2, N_LAYERS + 1)}

    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "tiny-llama"
    assert reader.get_field("controlvector.layer_count").contents() == N_LAYERS - 1
    assert field_types(reader, "controlvector.layer_count") == [gguf.GGUFValueType.INT32]
    names = [tensor.name for tensor in reader.tensors]
    assert names == [f"direction.{n}" for n in range(1, N_LAYERS)]
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == [D_MODEL]
        layer = int(tensor.name.split(".")[1]) + 1
        assert np.array_equal(np.asarray(tensor.data), vec.vectors[layer].numpy())
    assert sorted(p.name for p in path.parent.iterdir()) == ["cv.gguf"]  # no temp file left


def test_gguf_coefficient_normalize_layers_and_hint(tmp_path: Path):
    vec = make_vector()
    path = tmp_path / "cv.gguf"
    mapping = export_control_vector(
        vec, path, layers=[5, 3, 4, 3], coefficient=-1.5, normalize=True, model_hint="llama"
    )
    assert mapping == {3: 2, 4: 3, 5: 4}
    by_layer = read_control_vector(path)
    assert list(by_layer) == [3, 4, 5]
    for layer in (3, 5):
        raw = vec.vectors[layer].numpy().astype(np.float64)
        expected = -1.5 * raw / np.linalg.norm(raw)
        np.testing.assert_allclose(by_layer[layer].numpy(), expected, rtol=1e-5, atol=1e-7)
        assert by_layer[layer].norm().item() == pytest.approx(1.5, rel=1e-5)
    assert torch.equal(by_layer[4], torch.zeros(D_MODEL))  # zero layer: no NaN
    by_direction = read_control_vector(path, index="direction")
    assert list(by_direction) == [2, 3, 4]
    assert torch.equal(by_direction[2], by_layer[3])
    meta = read_control_vector_metadata(path)
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 3
    assert meta["persona_lens.trait"] == "sycophantic"
    assert meta["persona_lens.coefficient"] == pytest.approx(-1.5)
    assert meta["persona_lens.normalize"] is True


def test_gguf_raw_coefficient_values(tmp_path: Path):
    vec = make_vector()
    path = tmp_path / "cv.gguf"
    export_control_vector(vec, path, layers=[2, 6], coefficient=2.0)
    got = read_control_vector(path)
    assert list(got) == [2, 6]
    for layer in (2, 6):
        assert torch.equal(got[layer], 2.0 * vec.vectors[layer])


@pytest.mark.parametrize(
    ("layers", "match"), [([0], "embedding"), ([1, 2], "direction.0"), ([7], "out of range"), ([], "no layers")]
)
def test_gguf_rejects_layers_llama_cpp_cannot_steer(tmp_path: Path, layers: list[int], match: str):
    with pytest.raises(ValueError, match=match):
        export_control_vector(make_vector(), tmp_path / "cv.gguf", layers=layers)
    assert not (tmp_path / "cv.gguf").exists()


def test_gguf_rejects_non_finite_coefficient(tmp_path: Path):
    with pytest.raises(ValueError, match="finite"):
        export_control_vector(make_vector(), tmp_path / "cv.gguf", coefficient=float("inf"))


def test_read_control_vector_rejects_other_files(tmp_path: Path):
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")
    writer.add_tensor("direction.1", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="architecture"):
        read_control_vector(tmp_path / "model.gguf")

    writer = gguf.GGUFWriter(tmp_path / "zero.gguf", "controlvector")
    writer.add_tensor("direction.0", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(VectorFileError, match="N >= 1"):
        read_control_vector(tmp_path / "zero.gguf")

    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(VectorFileError, match="junk.gguf"):
        read_control_vector(tmp_path / "junk.gguf")


# ---------------------------------------------------------------------------------------------------------------
# npz


def test_npz_round_trip_is_exact(tmp_path: Path):
    vec = make_vector()
    path = export_npz(vec, tmp_path / "v.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["metadata", "vectors"]
        assert archive["vectors"].dtype == np.float32
        assert np.array_equal(archive["vectors"], vec.vectors.numpy())
        meta = json.loads(str(archive["metadata"]))
    assert meta["trait"] == "sycophantic" and meta["format"] == "persona_lens.vector"
    back = import_npz(path)
    assert torch.equal(back.vectors.view(torch.int32), vec.vectors.view(torch.int32))
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
        assert getattr(back, name) == getattr(vec, name), name


def test_npz_errors(tmp_path: Path):
    np.savez(tmp_path / "novectors.npz", metadata=np.array("{}"))
    with pytest.raises(VectorFileError, match="'vectors' is missing"):
        import_npz(tmp_path / "novectors.npz")
    np.savez(tmp_path / "badmeta.npz", vectors=np.zeros((3, 4), np.float32), metadata=np.array("{oops"))
    with pytest.raises(VectorFileError, match="not valid JSON"):
        import_npz(tmp_path / "badmeta.npz")
    vec = make_vector()
    export_npz(vec, tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as archive:
        meta = str(archive["metadata"])
    np.savez(tmp_path / "shape.npz", vectors=np.zeros((3, D_MODEL), np.float32), metadata=np.array(meta))
    with pytest.raises(VectorFileError, match="shape"):
        import_npz(tmp_path / "shape.npz")


# ---------------------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["persona_lens.cli.export"])
    return cli.main


@pytest.fixture
def saved(tmp_path: Path) -> tuple[PersonaVector, Path]:
    vec = make_vector()
    return vec, save_vector(vec, tmp_path / "syco.safetensors")


def test_cli_gguf_json(run_cli, saved, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    vec, path = saved
    out = tmp_path / "syco.gguf"
    code = run_cli(
        [
            "export",
            str(path),
            "--format",
            "gguf",
            "--out",
            str(out),
            "--layers",
            "2-3,5",
            "--coefficient",
            "0.5",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layers"] == [2, 3, 5]
    assert summary["tensors"] == {"2": "direction.1", "3": "direction.2", "5": "direction.4"}
    assert summary["coefficient"] == 0.5 and summary["normalize"] is False
    assert (summary["trait"], summary["n_layers"], summary["d_model"]) == ("sycophantic", N_LAYERS, D_MODEL)
    got = read_control_vector(out)
    assert torch.equal(got[5], 0.5 * vec.vectors[5])


def test_cli_gguf_text_output(run_cli, saved, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    _, path = saved
    out = tmp_path / "syco.gguf"
    assert run_cli(["export", str(path), "--format", "gguf", "--out", str(out), "--normalize"]) == 0
    text = capsys.readouterr().out
    assert "2->direction.1" in text and "--control-vector" in text
    assert list(read_control_vector(out)) == list(range(2, N_LAYERS + 1))


def test_cli_npz_and_pt(run_cli, saved, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    vec, path = saved
    assert run_cli(["export", str(path), "--format", "npz", "--out", str(tmp_path / "v.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "npz"
    assert torch.equal(import_npz(tmp_path / "v.npz").vectors, vec.vectors)
    assert run_cli(["export", str(path), "--format", "pt", "--out", str(tmp_path / "v.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "v.pt", weights_only=True), vec.vectors)
    assert load_vector(path).trait == vec.trait  # input untouched


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--format", "gguf", "--layers", "0-3"], "embedding"),
        (["--format", "gguf", "--layers", "1"], "direction.0"),
        (["--format", "gguf", "--layers", "ten"], "--layers"),
        (["--format", "gguf", "--layers", "5-2"], "--layers"),
        (["--format", "npz", "--coefficient", "2"], "only apply to --format gguf"),
        (["--format", "pt", "--layers", "3"], "only apply to --format gguf"),
    ],
)
def test_cli_bad_input_exit_2(run_cli, saved, tmp_path: Path, capsys, extra: list[str], match: str):
    _, path = saved
    code = run_cli(["export", str(path), "--out", str(tmp_path / "x.out"), *extra])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.out").exists()


def test_cli_bad_files(run_cli, saved, tmp_path: Path, capsys):
    _, path = saved
    assert (
        run_cli(["export", str(tmp_path / "missing.safetensors"), "--format", "npz", "--out", str(tmp_path / "o.npz")])
        == 2
    )
    assert "missing.safetensors" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert (
        run_cli(["export", str(tmp_path / "junk.safetensors"), "--format", "npz", "--out", str(tmp_path / "o.npz")])
        == 2
    )
    assert run_cli(["export", str(path), "--format", "gguf", "--out", str(path)]) == 2
    assert "input file" in capsys.readouterr().err
    assert load_vector(path).n_layers == N_LAYERS


def test_cli_out_under_a_file_is_exit_2(run_cli, saved, tmp_path: Path, capsys):
    """A user mistake, refused before anything is written (issue 15 item 7; it used to be exit 1 on the write)."""
    _, path = saved
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert run_cli(["export", str(path), "--format", "npz", "--out", str(blocker / "v.npz")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_exported_pt_imports_back(tmp_path: Path):
    vec = make_vector()
    export_authors_pt(vec, tmp_path / "x_prompt_avg_diff.pt")
    from persona_lens.core.vectors import import_authors_pt

    back = import_authors_pt(tmp_path / "x_prompt_avg_diff.pt", vec.trait, vec.model_name)
    assert back.positions == "prompt" and torch.equal(back.vectors, vec.vectors)
