"""Interop: persona vectors as llama.cpp control vectors (GGUF) and as plain numpy ``.npz`` files.

llama.cpp control vectors
-------------------------
A control-vector GGUF (``llama-completion --control-vector FILE`` / ``--control-vector-scaled FILE:SCALE``) holds:

* ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (a string llama.cpp does not check)
  and ``controlvector.layer_count`` (int32, the number of direction tensors; written by llama.cpp's own
  ``cvector-generator``, not read by the loader);
* one 1-D float32 tensor of ``n_embd`` values per steered layer, named ``direction.{N}``.

How ``direction.N`` maps to our layer index (read in llama.cpp's source, ggml-org/llama.cpp):

* ``common/common.cpp`` ``common_control_vector_load_one``: parses ``N`` from the tensor name, rejects ``N == 0``
  ("invalid (zero) direction tensor layer index"), requires F32 and 1-D, and stores ``strength * direction.N`` at
  offset ``n_embd * (N - 1)`` of a flat buffer ("layer 1 at [0]").
* ``src/llama-adapter.cpp`` ``llama_adapter_cvec::apply``: copies buffer offset ``n_embd * (il - 1)`` into
  ``tensors[il]`` for ``il = 1 .. n_layer - 1``; ``tensors[0]`` is always null ("there's never a tensor for
  layer 0"). So ``direction.N`` becomes ``tensors[N]``.
* Every model graph (``src/models/*.cpp``) loops ``for (int il = 0; il < n_layer; ++il)`` over the blocks and
  ends each block with ``cur = build_cvec(cur, il); cb(cur, "l_out", il);``, and ``build_cvec`` (``src/llama-
  graph.cpp``) is ``cvec->apply_to(ctx0, cur, il)``, i.e. ``cur + tensors[il]``.

Hence ``direction.N`` is added to the output of llama.cpp's block ``N`` counted **from 0**: that is the output of
block ``N + 1`` counted from 1, which is **our layer ``N + 1``** (HF ``hidden_states[N + 1]``, TransformerLens
``blocks.{N}.hook_resid_post``). We therefore write our layer ``l`` as ``direction.{l - 1}``. vgel/repeng agrees:
it reads ``hidden_states[i + 1]`` for its layer ``i``, steers ``model.layers[i]``'s output, and exports
``direction.{i}``. Consequences:

* exportable layers are ``2 .. n_layers``; layer 0 (embeddings) and layer 1 (output of the first block, which
  would be ``direction.0``) cannot be expressed and raise :class:`ValueError`;
* llama.cpp's ``--control-vector-layer-range START END`` counts in direction indices: our layers
  ``START + 1 .. END + 1``.

(Beware that llama.cpp's own ``cvector-generator`` names the mean of ``l_out-{il}`` ``direction.{il + 1}``, so its
vectors are applied one block later than where they were measured; files from persona_lens are not.)

Values written are ``coefficient * v_l`` (or ``coefficient * v_l / |v_l|`` with ``normalize=True``), so running
llama.cpp with ``--control-vector FILE`` adds exactly what ``h_l += coefficient * v_l`` adds in persona_lens.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch
from torch import Tensor

from persona_lens.core.io import atomic_output
from persona_lens.core.layers import check_layer
from persona_lens.core.vectors import (
    PersonaVector,
    VectorFileError,
    decode_metadata,
    encode_metadata,
    unit_rows,
)

__all__ = [
    "CONTROL_VECTOR_ARCH",
    "FIRST_EXPORTABLE_LAYER",
    "map_layer_to_direction",
    "map_direction_to_layer",
    "export_control_vector",
    "read_control_vector",
    "read_control_vector_metadata",
    "export_npz",
    "import_npz",
    "VectorExport",
    "export_vector",
    "EXPORT_FORMATS",
]

EXPORT_FORMATS = ("gguf", "npz", "pt")

CONTROL_VECTOR_ARCH = "controlvector"
#: Our smallest layer llama.cpp can steer (it is ``direction.1``); see the module docstring.
FIRST_EXPORTABLE_LAYER = 2
_DIRECTION_PREFIX = "direction."


def map_layer_to_direction(layer: int, n_layers: int) -> int:
    """The llama.cpp ``direction.N`` index that steers our ``layer`` (``N = layer - 1``); errors for 0 and 1."""
    check_layer(layer, n_layers)
    if layer == 0:
        raise ValueError(
            "layer 0 is the embedding stream; llama.cpp control vectors only act on block outputs, so it "
            f"cannot be exported (exportable layers: {FIRST_EXPORTABLE_LAYER}..{n_layers})"
        )
    if layer == 1:
        raise ValueError(
            "layer 1 (output of the first block) would be llama.cpp's direction.0, which llama.cpp rejects "
            f"('invalid (zero) direction tensor layer index'); exportable layers: {FIRST_EXPORTABLE_LAYER}.."
            f"{n_layers}"
        )
    return layer - 1


def map_direction_to_layer(direction: int) -> int:
    """Our layer index for llama.cpp's ``direction.N`` (``N + 1``)."""
    if direction < 1:
        raise ValueError(f"llama.cpp direction indices start at 1, got {direction}")
    return direction + 1


def _select_layers(vec: PersonaVector, layers: Iterable[int] | None) -> list[int]:
    if layers is None:
        chosen = list(range(FIRST_EXPORTABLE_LAYER, vec.n_layers + 1))
        if not chosen:
            raise ValueError(f"a vector of {vec.n_layers} block(s) has no layer llama.cpp can steer")
        return chosen
    chosen = sorted(set(layers))
    if not chosen:
        raise ValueError("no layers selected for export")
    for layer in chosen:
        map_layer_to_direction(layer, vec.n_layers)
    return chosen


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def export_control_vector(
    vec: PersonaVector,
    path: str | os.PathLike[str],
    *,
    layers: Iterable[int] | None = None,
    coefficient: float = 1.0,
    normalize: bool = False,
    model_hint: str | None = None,
) -> dict[int, int]:
    """Write ``vec`` as a llama.cpp control-vector GGUF; returns ``{our layer: llama.cpp direction index}``.

    ``layers`` are in our convention (default: every exportable one, ``2..n_layers``); our layer ``l`` becomes
    tensor ``direction.{l-1}`` holding ``coefficient * v_l`` (unit ``v_l`` if ``normalize``), float32.
    ``model_hint`` (default: the vector's model name) fills ``controlvector.model_hint``; llama.cpp only
    checks that the direction length equals the model's ``n_embd``. See the module docstring for the mapping.
    """
    coefficient = float(coefficient)
    if not math.isfinite(coefficient):
        raise ValueError(f"coefficient must be finite, got {coefficient}")
    if abs(coefficient) > _FLOAT32_MAX:
        raise ValueError(
            f"coefficient {coefficient:g} does not fit a float32 (at most {_FLOAT32_MAX:.4g} in size), "
            "which GGUF stores; give a smaller --coefficient"
        )
    chosen = _select_layers(vec, layers)
    source = vec.vectors.detach().to(device="cpu", dtype=torch.float32)
    if normalize:
        source = unit_rows(source)
    if not torch.isfinite(source[chosen]).all():
        raise ValueError(f"persona vector {vec.trait!r} holds NaN or infinite values at the selected layers")
    mapping = {layer: map_layer_to_direction(layer, vec.n_layers) for layer in chosen}
    scaled = {layer: (coefficient * source[layer].double()) for layer in chosen}
    biggest = max(float(values.abs().max()) for values in scaled.values())
    if biggest > _FLOAT32_MAX:
        raise ValueError(
            f"coefficient {coefficient:g} times the vector reaches {biggest:.3g}, more than a float32 "
            f"holds ({_FLOAT32_MAX:.4g}): the file would hold infinities; give a smaller --coefficient "
            "(or --normalize)"
        )
    with atomic_output(path) as tmp:
        writer = gguf.GGUFWriter(tmp, CONTROL_VECTOR_ARCH)
        writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_hint or vec.model_name)
        writer.add_int32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(mapping))
        # Provenance; llama.cpp ignores keys it does not know.
        writer.add_string("persona_lens.trait", vec.trait)
        writer.add_string("persona_lens.model_name", vec.model_name)
        writer.add_string("persona_lens.positions", vec.positions)
        writer.add_int32("persona_lens.n_layers", vec.n_layers)
        writer.add_float32("persona_lens.coefficient", coefficient)
        writer.add_bool("persona_lens.normalize", bool(normalize))
        writer.add_string("persona_lens.layer_mapping", "direction.N = persona_lens layer N + 1")
        for layer, direction in mapping.items():
            values = scaled[layer].numpy().astype(np.float32, copy=True)
            writer.add_tensor(f"{_DIRECTION_PREFIX}{direction}", values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return mapping


def _open_gguf(path: str | os.PathLike[str]) -> gguf.GGUFReader:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no control vector file at {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as error:  # the reader raises ValueError, struct.error, ... on a malformed file
        raise VectorFileError(f"{path}: not a readable GGUF file ({error})") from None


def _field_value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def read_control_vector_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every key/value of a control-vector GGUF (``general.architecture``, ``controlvector.*``, ...)."""
    reader = _open_gguf(path)
    return {key: _field_value(reader, key) for key in reader.fields if not key.startswith("GGUF.")}


def read_control_vector(
    path: str | os.PathLike[str], *, index: Literal["layer", "direction"] = "layer"
) -> dict[int, Tensor]:
    """Read the direction tensors of a llama.cpp control-vector GGUF as float32 tensors.

    Keys are our layer indices by default (``direction.N`` -> ``N + 1``), or llama.cpp's ``N`` with
    ``index="direction"``. Checks what llama.cpp checks: names ``direction.N`` with ``N >= 1``, F32, 1-D, one size.
    """
    if index not in ("layer", "direction"):
        raise ValueError(f"index must be 'layer' or 'direction', got {index!r}")
    reader = _open_gguf(path)
    arch = _field_value(reader, "general.architecture")
    if arch != CONTROL_VECTOR_ARCH:
        raise VectorFileError(f"{path}: general.architecture is {arch!r}, expected {CONTROL_VECTOR_ARCH!r}")
    out: dict[int, Tensor] = {}
    size: int | None = None
    for tensor in reader.tensors:
        suffix = tensor.name[len(_DIRECTION_PREFIX) :] if tensor.name.startswith(_DIRECTION_PREFIX) else ""
        if not suffix.isdigit() or int(suffix) < 1:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} is not named direction.N with N >= 1")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} is {tensor.tensor_type.name}, expected F32")
        if len(tensor.shape) != 1:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} has shape {list(tensor.shape)}, expected 1-D")
        if size is not None and int(tensor.n_elements) != size:
            raise VectorFileError(f"{path}: tensor {tensor.name!r} has {tensor.n_elements} values, others {size}")
        size = int(tensor.n_elements)
        direction = int(suffix)
        key = map_direction_to_layer(direction) if index == "layer" else direction
        out[key] = torch.from_numpy(np.array(tensor.data, dtype=np.float32, copy=True)).reshape(-1)
    return dict(sorted(out.items()))


def export_npz(vec: PersonaVector, path: str | os.PathLike[str]) -> Path:
    """Write ``vectors`` (float32 ``[n_layers + 1, d_model]``) and ``metadata`` (a JSON string) to an ``.npz``.

    For users of other frameworks: ``np.load(path)["vectors"]`` and ``json.loads(str(np.load(path)["metadata"]))``
    need no pickle. The metadata holds the same fields as our ``.safetensors`` header, so it round-trips exactly.
    """
    tensor = vec.vectors.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"persona vector {vec.trait!r} holds NaN or infinite values; refusing to save it")
    metadata = np.array(json.dumps(encode_metadata(vec), sort_keys=True))
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, vectors=tensor.numpy(), metadata=metadata)
    return Path(path)


def import_npz(path: str | os.PathLike[str]) -> PersonaVector:
    """Read a file written by :func:`export_npz` (validated like :func:`persona_lens.core.vectors.load_vector`)."""
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no .npz file at {source}")
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # BadZipFile, ValueError for object arrays, ...
        raise VectorFileError(f"{source}: not a readable .npz file without pickle ({error})") from None
    for name in ("vectors", "metadata"):
        if name not in arrays:
            raise VectorFileError(f"{source}: array {name!r} is missing (found {sorted(arrays)})")
    if arrays["metadata"].shape != () or arrays["metadata"].dtype.kind != "U":
        raise VectorFileError(f"{source}: array 'metadata' must be a single JSON string")
    try:
        meta = json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as error:
        raise VectorFileError(f"{source}: array 'metadata' is not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise VectorFileError(f"{source}: array 'metadata' must hold a JSON object")
    vectors = arrays["vectors"]
    if vectors.dtype != np.float32:
        raise VectorFileError(f"{source}: array 'vectors' has dtype {vectors.dtype}, expected float32")
    if not np.isfinite(vectors).all():
        raise VectorFileError(
            f"{source}: array 'vectors' holds NaN or infinite values, which cannot steer or project "
            "anything: export it again from a clean source"
        )
    return decode_metadata(meta, torch.from_numpy(np.ascontiguousarray(vectors)), source)


@dataclass
class VectorExport:
    """What ``export`` wrote: the file (``output``, in ``format``) and the vector it holds. The gguf fields
    (``layers``, ``coefficient``, ``normalize``, ``model_hint``) are None for the other formats. The exported file is
    the result's only file: :func:`export_vector` writes it and :meth:`load` reads this summary back from it (what
    the file does not hold comes back None: ``input`` always; for ``pt``, which holds the bare tensor, the trait,
    model and positions; for a gguf written before ``persona_lens.n_layers`` was recorded, ``n_layers``)."""

    output: str
    format: str
    trait: str | None
    model_name: str | None
    positions: str | None
    n_layers: int | None
    d_model: int
    input: str | None = None
    layers: list[int] | None = None
    coefficient: float | None = None
    normalize: bool | None = None
    model_hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary ``export --json`` prints."""
        data: dict[str, Any] = {
            "input": self.input,
            "output": self.output,
            "format": self.format,
            "trait": self.trait,
            "model_name": self.model_name,
            "positions": self.positions,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
        }
        if self.format == "gguf":
            data.update(
                layers=self.layers,
                tensors={str(layer): f"{_DIRECTION_PREFIX}{layer - 1}" for layer in self.layers or []},
                coefficient=self.coefficient,
                normalize=self.normalize,
                model_hint=self.model_hint,
            )
        return data

    @classmethod
    def load(cls, path: str | os.PathLike[str], format: str | None = None) -> VectorExport:
        """The summary back from an exported file (``format``: from the suffix ``.gguf``/``.npz``/``.pt`` when
        None)."""
        target = Path(path)
        kind = format or target.suffix.lstrip(".")
        if kind not in EXPORT_FORMATS:
            raise ValueError(
                f"{target}: cannot tell the export format from the suffix {target.suffix!r}; pass "
                f"format= one of {EXPORT_FORMATS}"
            )
        if kind == "npz":
            vec = import_npz(target)
            return cls(str(target), kind, vec.trait, vec.model_name, vec.positions, vec.n_layers, vec.d_model)
        if kind == "pt":
            if not target.is_file():
                raise FileNotFoundError(f"no .pt file at {target}")
            try:
                tensor = torch.load(target, map_location="cpu", weights_only=True)
            except Exception as error:  # pickle errors, zip errors, ...
                raise VectorFileError(f"{target}: not a readable tensor file ({error})") from None
            if not isinstance(tensor, Tensor) or tensor.ndim != 2:
                raise VectorFileError(f"{target}: expected one [n_layers + 1, d_model] tensor")
            return cls(str(target), kind, None, None, None, tensor.shape[0] - 1, tensor.shape[1])
        directions = read_control_vector(target)
        meta = read_control_vector_metadata(target)
        coefficient = meta.get("persona_lens.coefficient")
        n_layers = meta.get("persona_lens.n_layers")
        return cls(
            str(target),
            kind,
            meta.get("persona_lens.trait"),
            meta.get("persona_lens.model_name"),
            meta.get("persona_lens.positions"),
            None if n_layers is None else int(n_layers),
            int(next(iter(directions.values())).numel()) if directions else 0,
            layers=list(directions),
            coefficient=None if coefficient is None else float(str(np.float32(coefficient))),
            normalize=meta.get("persona_lens.normalize"),
            model_hint=meta.get(f"{CONTROL_VECTOR_ARCH}.model_hint"),
        )


def export_vector(
    vec: PersonaVector,
    path: str | os.PathLike[str],
    format: str,
    *,
    input: str | None = None,
    layers: Iterable[int] | None = None,
    coefficient: float = 1.0,
    normalize: bool = False,
    model_hint: str | None = None,
) -> VectorExport:
    """Write ``vec`` to ``path`` in ``format`` (``gguf``: :func:`export_control_vector` with the options;
    ``npz``: :func:`export_npz`; ``pt``: the authors' layout) and say what was written. The gguf stores
    ``coefficient`` as float32; :meth:`VectorExport.load` reads back its shortest decimal (``0.1`` for ``0.1``)."""
    from persona_lens.core.vectors import export_authors_pt

    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; use one of {EXPORT_FORMATS}")
    result = VectorExport(
        str(path), format, vec.trait, vec.model_name, vec.positions, vec.n_layers, vec.d_model, input=input
    )
    if format == "gguf":
        mapping = export_control_vector(
            vec, path, layers=layers, coefficient=coefficient, normalize=normalize, model_hint=model_hint
        )
        result.layers, result.normalize = list(mapping), bool(normalize)
        result.coefficient = float(coefficient)
        result.model_hint = model_hint or vec.model_name
    elif format == "npz":
        export_npz(vec, path)
    else:
        export_authors_pt(vec, path)
    return result
