"""Persona vectors: the mean-difference directions of Chen et al. (2025), their maths and their files.

A :class:`PersonaVector` holds one direction per layer, ``vectors[l] = mean(pos activations at l) - mean(neg
activations at l)``, unnormalized and in float32, as a ``[n_layers + 1, d_model]`` tensor in the layer convention
of :mod:`persona_lens.core.layers` (row 0 = embeddings, row ``l`` = output of block ``l``).

Files:

* :func:`save_vector` / :func:`load_vector`: our format, one ``.safetensors`` file with the tensor under
  ``"vectors"`` and every other fact in the safetensors header metadata (all strings, versioned with
  ``format = "persona_lens.vector"``, ``format_version = 1``). No pickle anywhere.
* :func:`import_authors_pt` / :func:`export_authors_pt`: the authors' layout, ``torch.save`` of the plain
  ``[n_layers + 1, d_model]`` tensor (files ``{trait}_response_avg_diff.pt``, ``{trait}_prompt_avg_diff.pt``,
  ``{trait}_prompt_last_diff.pt``), same layer convention as ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import safetensors
import safetensors.torch
import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.errors import Error
from persona_lens.core.io import atomic_output
from persona_lens.core.layers import check_layer
from persona_lens.core.protocols import TransformerLensConfig, TransformerLensModel
from persona_lens.core.version import __version__

ModelOrConfig = Union[TransformerLensModel, TransformerLensConfig]  # noqa: UP007 (a runtime alias)
"""What a vector is checked against: a model with a TransformerLens ``cfg``, or the ``cfg`` itself."""

__all__ = [
    "PersonaVector",
    "VectorLike",
    "VectorMismatchError",
    "VectorFileError",
    "REDUCTIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "LAYER_CONVENTION",
    "AUTHORS_KEYS",
    "mean_difference",
    "vector_list",
    "trait_names",
    "check_vector",
    "unit_rows",
    "unit_directions",
    "unit_vectors_by_layer",
    "cosine_similarity_matrix",
    "cosine_similarity_by_layer",
    "save_vector",
    "load_vector",
    "encode_metadata",
    "decode_metadata",
    "import_authors_pt",
    "export_authors_pt",
    "vector_digest",
]

#: Which token positions were averaged: response tokens (the paper's choice), all prompt tokens, last prompt token.
REDUCTIONS = ("response", "prompt", "last_prompt")

FORMAT = "persona_lens.vector"
FORMAT_VERSION = 1
#: Written into every file; a file with another convention is refused rather than silently misread.
LAYER_CONVENTION = (
    "persona_lens.core.layers v1: row l = Hugging Face hidden_states[l]; 0 = embeddings, "
    "l >= 1 = output of block l (TransformerLens blocks.{l-1}.hook_resid_post)"
)
_TENSOR_KEY = "vectors"

#: The authors' file suffixes / dict keys and the positions they average over.
AUTHORS_KEYS = {"response_avg_diff": "response", "prompt_avg_diff": "prompt", "prompt_last_diff": "last_prompt"}


class VectorMismatchError(Error, ValueError):
    """A persona vector used with a model (or another vector) whose shape or identity does not match."""


class VectorFileError(Error, ValueError):
    """A persona-vector file that cannot be read: wrong format, version, field or shape."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _library_version() -> str:
    return __version__


@dataclass(eq=False)
class PersonaVector:
    """One persona vector per layer: ``vectors[l]`` is the raw mean difference (positive - negative) at layer ``l``.

    ``n_positive`` / ``n_negative`` count the samples behind each mean (0 when unknown, e.g. an imported file);
    ``settings`` records how it was extracted and must be JSON-serialisable.
    """

    trait: str
    model_name: str
    vectors: Float[Tensor, "layer d_model"]
    positions: str = "response"
    n_positive: int = 0
    n_negative: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    library_version: str = field(default_factory=_library_version)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Tensor):
            raise TypeError(f"vectors must be a torch.Tensor, got {type(self.vectors).__name__}")
        if self.vectors.ndim != 2 or self.vectors.shape[0] < 1:
            raise ValueError(f"vectors must have shape [n_layers + 1, d_model], got {tuple(self.vectors.shape)}")
        if not self.vectors.is_floating_point():
            raise TypeError(f"vectors must be a floating-point tensor, got {self.vectors.dtype}")
        if self.positions not in REDUCTIONS:
            raise ValueError(f"positions must be one of {REDUCTIONS}, got {self.positions!r}")
        for name in ("n_positive", "n_negative"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        try:
            json.dumps(self.settings)
        except (TypeError, ValueError) as error:
            raise ValueError(f"settings must be JSON-serialisable: {error}") from None

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (the tensor has one more row, for the embeddings)."""
        return self.vectors.shape[0] - 1

    @property
    def d_model(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def from_activations(
        cls,
        trait: str,
        model_name: str,
        pos_acts: Float[Tensor, "n_pos layer d_model"] | tuple[Float[Tensor, "layer d_model"], int],
        neg_acts: Float[Tensor, "n_neg layer d_model"] | tuple[Float[Tensor, "layer d_model"], int],
        positions: str = "response",
        settings: dict[str, Any] | None = None,
    ) -> PersonaVector:
        """Build the vector from per-sample activations ``[n, layer, d_model]`` (each sample already averaged over
        its ``positions``), or from precomputed ``(mean, count)`` pairs; see :func:`mean_difference`."""
        pos_mean, n_pos = _mean_and_count(pos_acts, "positive")
        neg_mean, n_neg = _mean_and_count(neg_acts, "negative")
        return cls(
            trait=trait,
            model_name=model_name,
            vectors=_subtract_means(pos_mean, neg_mean),
            positions=positions,
            n_positive=n_pos,
            n_negative=n_neg,
            settings=dict(settings or {}),
        )

    def at(self, layer: int) -> Float[Tensor, " d_model"]:
        """The raw (unnormalized) vector at ``layer``, the one to steer with: ``h_l += a * v.at(l)``."""
        check_layer(layer, self.n_layers)
        return self.vectors[layer]

    def unit(self, layer: int | None = None) -> Float[Tensor, "... d_model"]:
        """Unit direction at ``layer`` (``[d_model]``), or at every layer (``[n_layers + 1, d_model]``) if None.

        Row normalisation (:func:`unit_rows`): a layer whose vector is exactly zero stays zero (never NaN).
        """
        if layer is None:
            return unit_rows(self.vectors)
        return unit_rows(self.at(layer))

    def norms(self) -> Float[Tensor, " layer"]:
        """L2 norm of the raw vector at every layer."""
        return self.vectors.norm(dim=-1)

    def incremental(self) -> Float[Tensor, "layer d_model"]:
        """The multi-layer variant of the paper: row 0 = ``v_0``, row ``l`` = ``v_l - v_{l-1}``.

        Steering every layer ``l`` with row ``l`` adds, in sum up to layer ``l``, exactly ``v_l``.
        """
        out = self.vectors.clone()
        out[1:] = self.vectors[1:] - self.vectors[:-1]
        return out

    def check_compatible(self, model: ModelOrConfig, *, allow_other_model: bool = False) -> None:
        """Raise :class:`VectorMismatchError` unless this vector fits ``model`` (or a TransformerLens-style cfg).

        ``model.cfg`` (or ``model`` itself) must have ``model_name``, ``n_layers`` and ``d_model``. A different
        ``n_layers`` or ``d_model`` is always an error; a different ``model_name`` is one unless
        ``allow_other_model=True`` (e.g. applying a base model's vector to its finetune). See :func:`check_vector`.
        """
        check_vector(self, model, allow_other_model=allow_other_model)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PersonaVector:
        """A copy with ``vectors`` moved to ``device`` and/or cast to ``dtype`` (metadata unchanged)."""
        return dataclasses.replace(self, vectors=self.vectors.to(device=device, dtype=dtype))


# ----------------------------------------------------------------------------------------------------------------
# vectors against a model


VectorLike = Union[PersonaVector, Float[Tensor, "layer d_model"], Float[Tensor, " d_model"]]  # noqa: UP007
"""A PersonaVector, or a bare tensor: ``[n_layers + 1, d_model]`` (one row per layer) or one ``[d_model]`` direction
(the one definition: hooks, activations and experiments all take this)."""


def vector_list(vectors: VectorLike | Sequence[VectorLike]) -> list[VectorLike]:
    """One vector (PersonaVector or tensor) or several, as a list."""
    if isinstance(vectors, (PersonaVector, Tensor)):
        return [vectors]
    out = list(vectors)
    if not out:
        raise ValueError("no vector given")
    return out


def trait_names(vectors: VectorLike | Sequence[VectorLike]) -> list[str]:
    """The trait of each PersonaVector (``vector<i>`` for a bare tensor), made unique with ``#2``, ``#3``..."""
    names: list[str] = []
    for index, vec in enumerate(vector_list(vectors)):
        base = vec.trait if isinstance(vec, PersonaVector) else f"vector{index}"
        name, copy = base, 2
        while name in names:
            name, copy = f"{base}#{copy}", copy + 1
        names.append(name)
    return names


def _describe(vec: VectorLike, index: int) -> str:
    return f"persona vector {vec.trait!r}" if isinstance(vec, PersonaVector) else f"vector {index}"


def _model_dims(model: ModelOrConfig) -> tuple[str | None, int, int]:
    """``(model_name or None, n_layers, d_model)`` of a model with a TransformerLens-style ``cfg``, or of a cfg."""
    cfg: Any = getattr(model, "cfg", model)  # a model's cfg, or the cfg itself
    try:
        n_layers, d_model = int(cfg.n_layers), int(cfg.d_model)
    except AttributeError as error:
        raise TypeError(f"a vector is checked against a model with .cfg.n_layers and .cfg.d_model ({error})") from None
    name = getattr(cfg, "model_name", None)
    return (None if name is None else str(name)), n_layers, d_model


def check_vector(
    vector: VectorLike,
    model: ModelOrConfig | None = None,
    *,
    allow_other_model: bool = False,
    full: bool = False,
    what: str | None = None,
) -> Float[Tensor, "*layer d_model"]:
    """The tensor behind ``vector`` (a PersonaVector or a tensor), checked: the one shape check of a vector.

    A vector is ``[n_layers + 1, d_model]`` (one row per layer) or, unless ``full``, one ``[d_model]`` direction.
    With ``model`` (a model with a TransformerLens-style ``cfg``, or the cfg), its shape must fit the model's
    ``n_layers`` and ``d_model``, always; a PersonaVector must also come from that model (``model_name``) unless
    ``allow_other_model`` (e.g. a base model's vector on its finetune). Raises :class:`VectorMismatchError` (a
    ValueError) saying what would fit; ``what`` names the vector in messages.
    """
    if isinstance(vector, PersonaVector):
        tensor, label = vector.vectors, what or f"persona vector {vector.trait!r}"
    elif isinstance(vector, Tensor):
        tensor, label = vector, what or "the vector"
    else:
        raise TypeError(f"expected a PersonaVector or a tensor, got {type(vector).__name__}")
    if tensor.dim() != 2 and (full or tensor.dim() != 1):
        form = (
            "the full [n_layers + 1, d_model] vector"
            if full
            else "a [n_layers + 1, d_model] vector or one [d_model] direction"
        )
        raise VectorMismatchError(f"{label} has shape {tuple(tensor.shape)}; expected {form}")
    if model is None:
        return tensor
    name, n_layers, d_model = _model_dims(model)
    ours = (
        f"{vector.model_name!r} (n_layers={vector.n_layers}, d_model={vector.d_model})"
        if isinstance(vector, PersonaVector)
        else ""
    )
    theirs = f"{'the model' if name is None else repr(name)} (n_layers={n_layers}, d_model={d_model})"
    needed = (n_layers + 1, d_model) if tensor.dim() == 2 else (d_model,)
    if tuple(tensor.shape) != needed:
        detail = (
            f"d_model={tensor.shape[-1]} instead of {d_model}"
            if tensor.shape[-1] != d_model
            else f"{tensor.shape[0]} layer rows instead of {n_layers + 1}: the embeddings and one per block"
        )
        message = f"{label} has shape {tuple(tensor.shape)}"
        if ours:
            message += f" from model {ours}"
        message += f", but the model is {theirs}, which needs shape {needed} ({detail})."
        if isinstance(vector, PersonaVector):
            message += (
                f" A vector only works on the model it was extracted from: load {vector.model_name!r}, or "
                f"extract the vector again on {'this model' if name is None else repr(name)}."
            )
        raise VectorMismatchError(message)
    if isinstance(vector, PersonaVector) and not allow_other_model and name != vector.model_name:
        if name is None:
            raise TypeError(
                "checking a persona vector against a model needs the model's .cfg.model_name (or "
                "allow_other_model=True)"
            )
        raise VectorMismatchError(
            f"{label} was extracted from {ours} but the model is {theirs}. The shapes agree, so if {name!r} "
            f"shares its residual stream with {vector.model_name!r} (e.g. a finetune of it), pass "
            f"allow_other_model=True; otherwise extract the vector again on {name!r}."
        )
    return tensor


def unit_directions(
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    model: ModelOrConfig | None = None,
    *,
    allow_other_model: bool = False,
) -> Float[Tensor, "k d_model"]:
    """Unit direction of each vector at ``layer`` (float32, CPU), checked against ``model`` when given
    (:func:`check_vector`). A ``[d_model]`` tensor is that direction. A zero direction is an error (:func:`unit_rows`).
    """
    rows, names = [], []
    for index, vec in enumerate(vector_list(vectors)):
        tensor = check_vector(vec, model, allow_other_model=allow_other_model, what=_describe(vec, index))
        if tensor.dim() == 2:
            tensor = tensor[check_layer(layer, tensor.shape[0] - 1)]
        rows.append(tensor.detach().float().cpu())
        names.append(f"{_describe(vec, index)} at layer {layer}")
    return unit_rows(torch.stack(rows), names=names)


def unit_vectors_by_layer(
    vectors: VectorLike | Sequence[VectorLike], model: ModelOrConfig | None = None, *, allow_other_model: bool = False
) -> Float[Tensor, "k layer d_model"]:
    """Each vector's unit direction at every layer (float32, CPU), checked against ``model`` when given
    (:func:`check_vector`; only full ``[n_layers + 1, d_model]`` vectors). A zero row stays zero (:func:`unit_rows`).
    """
    tensors = [
        check_vector(vec, model, allow_other_model=allow_other_model, full=True, what=_describe(vec, index))
        for index, vec in enumerate(vector_list(vectors))
    ]
    return unit_rows(torch.stack([t.detach().float().cpu() for t in tensors]))


# ----------------------------------------------------------------------------------------------------------------
# maths


def _mean_and_count(acts: Any, side: str) -> tuple[Tensor, int]:
    if isinstance(acts, tuple):
        if len(acts) != 2:
            raise ValueError(f"{side}: a precomputed mean must be given as (mean [layer, d_model], count)")
        mean, count = acts
        if not isinstance(mean, Tensor) or mean.ndim != 2:
            raise ValueError(f"{side}: precomputed mean must be a [layer, d_model] tensor")
        if int(count) < 1:
            raise ValueError(f"{side}: count must be >= 1, got {count}")
        return mean.float(), int(count)
    if not isinstance(acts, Tensor) or acts.ndim != 3:
        shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise ValueError(f"{side} activations must be a [n_samples, layer, d_model] tensor, got {shape}")
    if acts.shape[0] == 0:
        raise ValueError(f"no {side} samples: the mean of an empty set is undefined")
    return acts.float().mean(dim=0), int(acts.shape[0])


def mean_difference(
    positive: Float[Tensor, "n_pos layer d_model"] | tuple[Float[Tensor, "layer d_model"], int],
    negative: Float[Tensor, "n_neg layer d_model"] | tuple[Float[Tensor, "layer d_model"], int],
) -> Float[Tensor, "layer d_model"]:
    """``mean(positive) - mean(negative)`` over samples, in float32.

    Each side is either per-sample activations ``[n, layer, d_model]`` or a precomputed ``(mean, count)`` pair.
    """
    pos_mean, _ = _mean_and_count(positive, "positive")
    neg_mean, _ = _mean_and_count(negative, "negative")
    return _subtract_means(pos_mean, neg_mean)


def _subtract_means(pos_mean: Tensor, neg_mean: Tensor) -> Tensor:
    if pos_mean.shape != neg_mean.shape:
        raise ValueError(
            f"positive and negative activations differ in shape: [layer, d_model] = {tuple(pos_mean.shape)} "
            f"vs {tuple(neg_mean.shape)}"
        )
    return pos_mean - neg_mean.to(pos_mean.device)


def unit_rows(x: Float[Tensor, "*rows d"], *, names: str | Sequence[str] | None = None) -> Float[Tensor, "*rows d"]:
    """Each row of ``x`` divided by its L2 norm (same dtype): the one unit-vector helper.

    Zero rows: a zero row has no direction.

    * Normalising rows in bulk (``names=None``: every layer of a vector, cosine similarities, shifts) leaves a zero
      row zero (never NaN), so whatever is projected on it reads 0. This happens for real: a ``last_prompt``
      vector's layer 0 is exactly zero, since both sides of the mean difference read the same token's embedding.
    * Asking for directions to use (to ablate, cap, record or project on) names them, one name per row (a string
      for one ``[d]`` direction): then a zero row raises a ValueError naming it, e.g. ``"persona vector 'evil' at
      layer 0"``, since an ablation or a projection along no direction would silently do nothing.
    """
    norms = x.norm(dim=-1, keepdim=True)
    if names is not None:
        labels = [names] if isinstance(names, str) else list(names)
        if len(labels) != norms.numel():
            raise ValueError(f"unit_rows got {len(labels)} names for {norms.numel()} rows")
        zero = [label for label, norm in zip(labels, norms.flatten().tolist()) if norm == 0]
        if zero:
            raise ValueError(
                f"{', '.join(zero)} {'is a zero vector' if len(zero) == 1 else 'are zero vectors'}: "
                "a zero vector has no direction to ablate, cap, record or project on"
            )
    return x / norms.clamp_min(torch.finfo(x.dtype).tiny)


def _as_tensor(vec: PersonaVector | Tensor) -> Tensor:
    return vec.vectors if isinstance(vec, PersonaVector) else vec


def cosine_similarity_matrix(vectors: Sequence[PersonaVector | Tensor], layer: int) -> Float[Tensor, "k k"]:
    """Pairwise cosine similarity of ``k`` persona vectors at one layer, in float32.

    A zero vector has similarity 0 with everything (itself included).
    """
    if len(vectors) == 0:
        raise ValueError("cosine_similarity_matrix needs at least one vector")
    rows = []
    for i, vec in enumerate(vectors):
        tensor = _as_tensor(vec)
        check_layer(layer, tensor.shape[0] - 1)
        if tensor.shape[1] != _as_tensor(vectors[0]).shape[1]:
            raise VectorMismatchError(
                f"vector {i} has d_model={tensor.shape[1]} but vector 0 has d_model="
                f"{_as_tensor(vectors[0]).shape[1]}: vectors from different models cannot be compared"
            )
        rows.append(tensor[layer].detach().float().cpu())
    units = unit_rows(torch.stack(rows))
    return (units @ units.T).clamp(-1.0, 1.0)


def cosine_similarity_by_layer(a: PersonaVector | Tensor, b: PersonaVector | Tensor) -> Float[Tensor, " layer"]:
    """Cosine similarity of two vectors of the same shape, layer by layer (0 where either is zero)."""
    ta, tb = _as_tensor(a).detach().float(), _as_tensor(b).detach().float()
    if ta.shape != tb.shape:
        raise VectorMismatchError(
            f"cannot compare vectors of shapes {tuple(ta.shape)} and {tuple(tb.shape)}: they come from models "
            "with different n_layers or d_model"
        )
    return (unit_rows(ta) * unit_rows(tb.to(ta.device))).sum(dim=-1).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# files


def encode_metadata(vec: PersonaVector) -> dict[str, str]:
    """Every fact of ``vec`` but the tensor, as the string dict stored in our files."""
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "layer_convention": LAYER_CONVENTION,
        "trait": vec.trait,
        "model_name": vec.model_name,
        "positions": vec.positions,
        "n_layers": str(vec.n_layers),
        "d_model": str(vec.d_model),
        "n_positive": str(vec.n_positive),
        "n_negative": str(vec.n_negative),
        "settings": json.dumps(vec.settings, sort_keys=True),
        "created": vec.created,
        "library_version": vec.library_version,
    }


def _field(meta: dict[str, str], key: str, source: str) -> str:
    if key not in meta:
        raise VectorFileError(f"{source}: metadata field {key!r} is missing")
    value = meta[key]
    if not isinstance(value, str):
        raise VectorFileError(f"{source}: metadata field {key!r} must be a string, got {type(value).__name__}")
    return value


def _int_field(meta: dict[str, str], key: str, source: str, minimum: int = 0) -> int:
    raw = _field(meta, key, source)
    try:
        value = int(raw)
    except ValueError:
        raise VectorFileError(f"{source}: metadata field {key!r} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise VectorFileError(f"{source}: metadata field {key!r} must be >= {minimum}, got {value}")
    return value


def decode_metadata(meta: dict[str, str] | None, tensor: Tensor, source: str) -> PersonaVector:
    """Validate the metadata of a file (named ``source`` in errors) and build the vector it describes."""
    if not meta:
        raise VectorFileError(f"{source}: no persona_lens metadata; this file was not written by persona_lens")
    fmt = _field(meta, "format", source)
    if fmt != FORMAT:
        raise VectorFileError(f"{source}: metadata field 'format' is {fmt!r}, expected {FORMAT!r}")
    version = _int_field(meta, "format_version", source, minimum=1)
    if version > FORMAT_VERSION:
        raise VectorFileError(
            f"{source}: metadata field 'format_version' is {version}, but this persona_lens reads only up to "
            f"{FORMAT_VERSION}; upgrade persona_lens"
        )
    convention = _field(meta, "layer_convention", source)
    if convention != LAYER_CONVENTION:
        raise VectorFileError(
            f"{source}: metadata field 'layer_convention' is {convention!r}, expected {LAYER_CONVENTION!r}"
        )
    n_layers = _int_field(meta, "n_layers", source)
    d_model = _int_field(meta, "d_model", source, minimum=1)
    expected = (n_layers + 1, d_model)
    if tuple(tensor.shape) != expected:
        raise VectorFileError(
            f"{source}: tensor {_TENSOR_KEY!r} has shape {tuple(tensor.shape)}, but the metadata (n_layers="
            f"{n_layers}, d_model={d_model}) says {expected}"
        )
    if tensor.dtype != torch.float32:
        raise VectorFileError(f"{source}: tensor {_TENSOR_KEY!r} has dtype {tensor.dtype}, expected float32")
    positions = _field(meta, "positions", source)
    if positions not in REDUCTIONS:
        raise VectorFileError(f"{source}: metadata field 'positions' is {positions!r}, expected one of {REDUCTIONS}")
    try:
        settings = json.loads(_field(meta, "settings", source))
    except json.JSONDecodeError as error:
        raise VectorFileError(f"{source}: metadata field 'settings' is not valid JSON ({error})") from None
    except RecursionError:
        raise VectorFileError(f"{source}: metadata field 'settings' is JSON nested too deeply to read") from None
    if not isinstance(settings, dict):
        raise VectorFileError(f"{source}: metadata field 'settings' must be a JSON object")
    return PersonaVector(
        trait=_field(meta, "trait", source),
        model_name=_field(meta, "model_name", source),
        vectors=tensor,
        positions=positions,
        n_positive=_int_field(meta, "n_positive", source),
        n_negative=_int_field(meta, "n_negative", source),
        settings=settings,
        created=_field(meta, "created", source),
        library_version=_field(meta, "library_version", source),
    )


def _cpu_fp32(vec: PersonaVector) -> Tensor:
    tensor = vec.vectors.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"persona vector {vec.trait!r} holds NaN or infinite values; refusing to save it")
    return tensor


def _refuse_non_finite(tensor: Tensor, source: str) -> None:
    bad = (~torch.isfinite(tensor)).any(dim=-1).nonzero().flatten().tolist() if tensor.dim() == 2 else []
    if bad or not torch.isfinite(tensor).all():
        raise VectorFileError(
            f"{source}: the vector holds NaN or infinite values (layer rows {bad[:8]}); it cannot "
            "steer or project anything: extract it again, or export it from a clean source"
        )


def save_vector(vec: PersonaVector, path: str | os.PathLike[str]) -> Path:
    """Write ``vec`` to ``path`` as a ``.safetensors`` file (float32 tensor + string metadata), atomically."""
    data = safetensors.torch.save({_TENSOR_KEY: _cpu_fp32(vec)}, metadata=encode_metadata(vec))
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def load_vector(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> PersonaVector:
    """Read a file written by :func:`save_vector`, checking format, version, fields and shape."""
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no persona vector file at {source}")
    try:
        with safetensors.safe_open(source, framework="pt", device="cpu") as handle:
            meta = handle.metadata()
            keys = list(handle.keys())
            if _TENSOR_KEY not in keys:
                raise VectorFileError(f"{source}: no tensor named {_TENSOR_KEY!r} (found {keys})")
            tensor = handle.get_tensor(_TENSOR_KEY)
    except VectorFileError:
        raise
    except Exception as error:  # safetensors raises its own error types for a malformed file
        raise VectorFileError(f"{source}: not a readable safetensors file ({error})") from None
    vec = decode_metadata(meta, tensor, source)
    _refuse_non_finite(vec.vectors, source)
    return vec if torch.device(device).type == "cpu" else vec.to(device)


def _positions_from_name(path: Path) -> str | None:
    for key, positions in AUTHORS_KEYS.items():
        if path.stem.endswith(key):
            return positions
    return None


def import_authors_pt(
    path: str | os.PathLike[str],
    trait: str,
    model_name: str,
    *,
    key: str = "response_avg_diff",
    positions: str | None = None,
) -> PersonaVector:
    """Read a vector saved by the authors' code: ``torch.save`` of a ``[n_layers + 1, d_model]`` tensor.

    Loaded with ``weights_only=True`` (no arbitrary pickle). A dict of tensors is accepted too, and ``key``
    (``"response_avg_diff"``, ``"prompt_avg_diff"`` or ``"prompt_last_diff"``) picks the entry. ``positions``
    defaults to the one the key or the file name (``{trait}_prompt_last_diff.pt`` ...) implies, else
    ``"response"``. Sample counts are unknown and recorded as 0.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no file at {source}")
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError for a non-torch file, ...
        raise VectorFileError(f"{source}: not a plain tensor file loadable with weights_only=True ({error})") from None
    used_key: str | None = None
    if isinstance(obj, dict):
        matches = [k for k in obj if isinstance(k, str) and (k == key or k.endswith(f"_{key}"))]
        if len(matches) != 1:
            raise VectorFileError(
                f"{source}: expected exactly one entry for key {key!r}, found {len(matches)} among {list(obj)}"
            )
        used_key = matches[0]
        obj = obj[used_key]
        implied = AUTHORS_KEYS.get(key)
    else:
        implied = _positions_from_name(source)
    if not isinstance(obj, Tensor) or obj.ndim != 2 or obj.shape[0] < 2 or not obj.is_floating_point():
        shape = tuple(obj.shape) if isinstance(obj, Tensor) else type(obj).__name__
        raise VectorFileError(f"{source}: expected a floating-point [n_layers + 1, d_model] tensor, got {shape}")
    _refuse_non_finite(obj, str(source))
    if obj.dtype != torch.float32 and bool((obj.detach().double().abs() > torch.finfo(torch.float32).max).any()):
        raise VectorFileError(
            f"{source}: the {obj.dtype} tensor holds values beyond what float32 holds "
            f"({torch.finfo(torch.float32).max:.4g}), which would become infinite; rescale it"
        )
    settings = {"source": "authors_pt", "source_file": source.name}
    if used_key is not None:
        settings["source_key"] = used_key
    return PersonaVector(
        trait=trait,
        model_name=model_name,
        vectors=obj.detach().float().contiguous(),
        positions=positions or implied or "response",
        settings=settings,
    )


def export_authors_pt(vec: PersonaVector, path: str | os.PathLike[str]) -> Path:
    """Write the authors' layout: ``torch.save`` of the plain float32 ``[n_layers + 1, d_model]`` tensor."""
    tensor = _cpu_fp32(vec)
    with atomic_output(path) as tmp:
        torch.save(tensor, tmp)
    return Path(path)


def vector_digest(vector: Any) -> str:
    """A short, stable fingerprint of a PersonaVector's (or a tensor's) values: what run records store, so a
    resumed run can tell that it is steering with the same vector."""
    tensor = vector.vectors if hasattr(vector, "vectors") else vector
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
