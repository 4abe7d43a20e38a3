"""The report of ``space build`` and the folder it owns: ``alignment.json`` (:func:`axis_alignment` per layer, the
roles built and left out, and the role map: each role's and trait vector's (PC1, PC2) position at one layer).
:meth:`SpaceReport.load` reads it back; :func:`persona_lens.viz.space.space_figures` draws the variance and role-map
figures from it without the model. The space itself is ``space.safetensors`` (:class:`PersonaSpace`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from persona_lens.core.controls import DEFAULT_RANDOM_DIRECTIONS
from persona_lens.core.io import write_json_atomic
from persona_lens.core.results import read_json
from persona_lens.experiments.space.drift import DriftResult
from persona_lens.experiments.space.fit import PersonaSpace, axis_alignment

__all__ = [
    "SpaceReport",
    "space_report",
    "role_map",
    "default_map_layer",
    "DriftReport",
    "drift_report",
    "ALIGNMENT_JSON",
    "DRIFT_JSON",
]

log = logging.getLogger(__name__)

ALIGNMENT_JSON = "alignment.json"
DRIFT_JSON = "drift.json"


def default_map_layer(n_layers: int) -> int:
    """The role map's layer when none is given: 2/3 of the depth."""
    return max(1, (2 * n_layers) // 3)


def role_map(space: PersonaSpace, traits: Mapping[str, Float[Tensor, "layer d_model"]], layer: int) -> dict[str, Any]:
    """Every role's (the default last) PC2 score at ``layer`` and each trait vector's (PC1, PC2) components there
    (the roles' PC1 and axis projection are in the alignment rows)."""
    names = [*space.roles, space.default_role]
    two = space.components.shape[1] > 1
    pc2 = space.scores(space.role_vectors)[:, layer, 1].tolist() if two else [0.0] * len(space.roles)
    default_pc2 = float(space.scores(space.default_mean)[layer, 1]) if two else 0.0
    positions = {
        name: [
            float(v.float().cpu()[layer] @ space.components[layer, 0]),
            float(v.float().cpu()[layer] @ space.components[layer, 1]) if two else 0.0,
        ]
        for name, v in traits.items()
    }
    return {"layer": layer, "names": names, "pc2": [*pc2, default_pc2], "traits": positions}


@dataclass
class SpaceReport:
    """The content of ``alignment.json``: ``model``, ``default_role``, ``roles``, ``k_random``, ``seed``, ``layers``
    (one alignment row per layer), ``roles_built``, ``roles_skipped`` and ``role_map``."""

    alignment: dict[str, Any]

    @property
    def model_name(self) -> str:
        return self.alignment["model"]

    @property
    def role_map(self) -> dict[str, Any]:
        return self.alignment["role_map"]

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``alignment.json`` into ``folder``; the paths written."""
        return [write_json_atomic(Path(folder) / ALIGNMENT_JSON, self.alignment)]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SpaceReport:
        """The report back from ``alignment.json``. A report written before it held the role map gets it from the
        folder's ``space.safetensors`` at the default layer, without the trait arrows (their vectors were not
        saved); a warning says so."""
        out = Path(folder)
        alignment = read_json(out / ALIGNMENT_JSON, ALIGNMENT_JSON)
        if "role_map" not in alignment:
            space = PersonaSpace.load(out / "space.safetensors")
            alignment["role_map"] = role_map(space, {}, default_map_layer(space.n_layers))
            log.warning(
                "%s holds no role map (written by an older persona_lens); drawn from space.safetensors at "
                "layer %d without the trait vectors",
                out / ALIGNMENT_JSON,
                alignment["role_map"]["layer"],
            )
        return cls(alignment)


def space_report(
    space: PersonaSpace,
    traits: Mapping[str, Float[Tensor, "layer d_model"]] | None = None,
    *,
    layer: int | None = None,
    k_random: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
) -> SpaceReport:
    """:func:`axis_alignment` of ``space`` (with ``traits``), the roles built and left out (from the space's
    metadata) and the role map at ``layer`` (default: :func:`default_map_layer`)."""
    traits = dict(traits or {})
    alignment = axis_alignment(space, traits=traits, k_random=k_random, seed=seed)
    alignment["roles_built"] = space.meta.get("roles", {})
    alignment["roles_skipped"] = space.meta.get("skipped", {})
    alignment["role_map"] = role_map(space, traits, default_map_layer(space.n_layers) if layer is None else layer)
    return SpaceReport(alignment)


@dataclass
class DriftReport:
    """The content of ``drift.json`` (``space drift``): the conversation's :meth:`DriftResult.to_json`, ``model``
    (the space's model) and, when compared, the reference conversation's drift and the paired difference, or the
    same turns alone and what the context adds."""

    data: dict[str, Any]

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``drift.json`` into ``folder``; the paths written."""
        return [write_json_atomic(Path(folder) / DRIFT_JSON, self.data)]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> DriftReport:
        """The report back from ``drift.json`` (one written before it held ``model`` loads with ``model`` None)."""
        data = read_json(Path(folder) / DRIFT_JSON, DRIFT_JSON)
        data.setdefault("model", None)
        return cls(data)

    @property
    def replies(self) -> list[str]:
        """The first 80 characters of each assistant turn (the figure's labels)."""
        return [m["content"][:80] for m in self.data["messages"] if m["role"] == "assistant"]


def drift_report(
    result: DriftResult,
    model_name: str,
    *,
    reference: DriftResult | None = None,
    paired: Any = None,
    alone: DriftResult | None = None,
    context: Any = None,
) -> DriftReport:
    """``result`` as saved, with its ``reference`` and their ``paired`` comparison, or the turns ``alone`` and the
    ``context`` comparison (:func:`compare_drift` Baselines), when given."""
    data = {**result.to_json(), "model": model_name}
    if paired is not None and reference is not None:
        data["reference_drift"] = reference.drift.to_dict()
        data["drift_minus_reference"] = paired.to_dict()
        data["drift_minus_reference_summary"] = paired.summary()
    if context is not None and alone is not None:
        data["turns_alone_at_layer"] = alone.turn_projections[:, result.layer].tolist()
        data["alone_drift"] = alone.drift.to_dict()
        data["drift_minus_alone"] = context.to_dict()
        data["drift_minus_alone_summary"] = context.summary()
    return DriftReport(data)
