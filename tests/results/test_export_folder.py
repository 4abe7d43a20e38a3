"""``export``: the exported file is the result's only file; VectorExport.load reads back from it the summary
export_vector reported (what the format does not hold comes back None), for each format. Nothing to redraw."""

from __future__ import annotations

import pytest
import torch

from persona_lens.core.vectors import VectorFileError
from persona_lens.experiments.export import VectorExport, export_vector, read_control_vector
from tests.experiments.test_export import make_vector


@pytest.mark.parametrize(
    "options", [{}, {"layers": [2, 3, 5], "coefficient": 0.1, "normalize": True, "model_hint": "llama"}]
)
def test_gguf_export_loads_back_the_summary_and_the_directions(tmp_path, options):
    vec = make_vector()
    written = export_vector(vec, tmp_path / "v.gguf", "gguf", input="v.safetensors", **options)
    loaded = VectorExport.load(tmp_path / "v.gguf")
    assert loaded.to_json() == {**written.to_json(), "input": None}
    assert loaded.layers == (options.get("layers") or list(range(2, vec.n_layers + 1)))
    assert loaded.n_layers == vec.n_layers and loaded.d_model == vec.d_model
    directions = read_control_vector(tmp_path / "v.gguf")
    expected = vec.vectors[loaded.layers].float()
    if options.get("normalize"):
        expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(torch.stack(list(directions.values())), options.get("coefficient", 1.0) * expected)


@pytest.mark.parametrize("format", ["npz", "pt"])
def test_npz_and_pt_exports_load_back_what_they_hold(tmp_path, format):
    vec = make_vector()
    written = export_vector(vec, tmp_path / f"v.{format}", format)
    loaded = VectorExport.load(tmp_path / f"v.{format}")
    assert (loaded.n_layers, loaded.d_model, loaded.format) == (vec.n_layers, vec.d_model, format)
    if format == "npz":
        assert loaded == written  # the npz holds the vector's whole header
    else:  # the authors' layout is the bare tensor
        assert (loaded.trait, loaded.model_name, loaded.positions) == (None, None, None)
        assert torch.equal(torch.load(tmp_path / "v.pt", weights_only=True), vec.vectors.float())


def test_an_unknown_or_broken_file_is_named_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"suffix '\.bin'.*pass format="):
        VectorExport.load(tmp_path / "v.bin")
    (tmp_path / "v.pt").write_bytes(b"not a tensor")
    with pytest.raises(VectorFileError, match="not a readable tensor file"):
        VectorExport.load(tmp_path / "v.pt")
    with pytest.raises(FileNotFoundError, match="no control vector file"):
        VectorExport.load(tmp_path / "missing.gguf")
