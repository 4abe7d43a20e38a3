"""The space (topics 2, 3 and the stored capping candidates of 6 in :mod:`persona_lens.experiments.space`): PCA of the
role vectors per layer, the Assistant axis, the default role's per-token percentiles along it and along random
control directions, :func:`build_space` (role units -> space) and :func:`axis_alignment` beside random directions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.chat import EncodedConversation, collate
from persona_lens.core.controls import (
    DEFAULT_RANDOM_DIRECTIONS,
    ControlVerdict,
    beats_controls,
    compare,
    random_directions,
    random_in_span,
    random_like,
)
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import install_hooks
from persona_lens.core.io import JsonlRecords
from persona_lens.core.layers import check_layer, hook_name
from persona_lens.core.vectors import unit_rows
from persona_lens.experiments.executor import Executor
from persona_lens.experiments.space.roles import (
    JudgePair,
    RoleNotPlayed,
    RoleVector,
    SpaceConfig,
    _encode_record,
    _unit_dir,
    build_role_vector,
)
from persona_lens.experiments.space.storage import _load_tensors, _save_tensors
from persona_lens.traits.roles import Role, RoleSet

__all__ = [
    "DEFAULT_CAP_CONTROLS",
    "PersonaSpace",
    "SpanAlignment",
    "axis_alignment",
    "measure_pc1_in_span",
    "build_space",
    "cap_control_directions",
    "default_token_quantiles",
    "fit_space",
]


DEFAULT_CAP_CONTROLS = 10
"""Random directions whose default per-token percentiles a space stores (the capping control's candidates)."""


@dataclass
class PersonaSpace:
    """Role vectors, their per-layer PCA and the Assistant axis (all ``[n_layers + 1, ...]``, our layer convention)."""

    model_name: str
    roles: list[str]
    """The non-default roles, in the row order of ``role_vectors``."""
    default_role: str
    role_vectors: Float[Tensor, "role layer d_model"]
    default_activations: Float[Tensor, "n layer d_model"]
    axis: Float[Tensor, "layer d_model"]
    """mean(default activations) - mean(role vectors), raw (not normalised)."""
    center: Float[Tensor, "layer d_model"]
    """mean(role vectors): the PCA centre."""
    components: Float[Tensor, "layer k d_model"]
    """Unit principal directions (loadings), sign chosen so the default role scores >= 0."""
    explained: Float[Tensor, "layer k"]
    """Share of the role vectors' variance each component explains."""
    token_quantiles: Float[Tensor, "layer 101"] | None = None
    """Percentiles 0..100 of the default role's per-token projections on the unit axis (response tokens)."""
    meta: dict[str, Any] = field(default_factory=dict)
    control_quantiles: Float[Tensor, "k layer 101"] | None = None
    """The same percentiles along each of :func:`cap_control_directions` (``meta["cap_controls"]``: k, seed)."""

    @property
    def n_layers(self) -> int:
        return self.axis.shape[0] - 1

    @property
    def default_mean(self) -> Float[Tensor, "layer d_model"]:
        return self.default_activations.mean(0)

    def axis_unit(self) -> Float[Tensor, "layer d_model"]:
        return unit_rows(self.axis, names=[f"axis at layer {i}" for i in range(self.axis.shape[0])])

    def project(self, activations: Float[Tensor, "... layer d_model"]) -> Float[Tensor, "... layer"]:
        """Projections on the unit axis at every layer."""
        return torch.einsum("...ld,ld->...l", activations.float(), self.axis_unit())

    def scores(self, activations: Float[Tensor, "... layer d_model"]) -> Float[Tensor, "... layer k"]:
        """Coordinates on the principal components (after subtracting the centre)."""
        return torch.einsum("...ld,lkd->...lk", activations.float() - self.center, self.components)

    def default_band(
        self, low: float = 5.0, high: float = 95.0
    ) -> tuple[Float[Tensor, " layer"], Float[Tensor, " layer"]]:
        """Per-layer ``low``/``high`` percentiles of the default replies' (response-mean) axis projections."""
        projections = self.project(self.default_activations).numpy()
        return (
            torch.from_numpy(np.percentile(projections, low, axis=0)).float(),
            torch.from_numpy(np.percentile(projections, high, axis=0)).float(),
        )

    def save(self, path: str | Path) -> Path:
        tensors = {
            "role_vectors": self.role_vectors,
            "default_activations": self.default_activations,
            "axis": self.axis,
            "center": self.center,
            "components": self.components,
            "explained": self.explained,
        }
        if self.token_quantiles is not None:
            tensors["token_quantiles"] = self.token_quantiles
        if self.control_quantiles is not None:
            tensors["control_quantiles"] = self.control_quantiles
        meta = {
            "model_name": self.model_name,
            "roles": self.roles,
            "default_role": self.default_role,
            "meta": self.meta,
        }
        return _save_tensors(Path(path), tensors, meta, "space")

    @classmethod
    def load(cls, path: str | Path) -> PersonaSpace:
        tensors, meta = _load_tensors(Path(path), "space")
        return cls(
            meta["model_name"],
            meta["roles"],
            meta["default_role"],
            tensors["role_vectors"],
            tensors["default_activations"],
            tensors["axis"],
            tensors["center"],
            tensors["components"],
            tensors["explained"],
            tensors.get("token_quantiles"),
            meta.get("meta", {}),
            tensors.get("control_quantiles"),
        )


def fit_space(
    role_vectors: Mapping[str, Float[Tensor, "layer d_model"]],
    default_activations: Float[Tensor, "n layer d_model"],
    *,
    default_role: str = "default",
    model_name: str = "",
    n_components: int | None = None,
) -> PersonaSpace:
    """PCA per layer of the role vectors (``default_role`` left out of the fit) and the Assistant axis."""
    names = [name for name in role_vectors if name != default_role]
    if len(names) < 2:
        raise ValueError(f"a persona space needs at least 2 roles besides {default_role!r}, got {names}")
    if default_activations.ndim != 3 or default_activations.shape[0] < 1:
        raise ValueError(
            f"default_activations must be [n >= 1, layer, d_model], got {tuple(default_activations.shape)}"
        )
    stack = torch.stack([role_vectors[name].float().cpu() for name in names])  # [role, layer, d]
    if stack.shape[1:] != default_activations.shape[1:]:
        raise ValueError(
            f"role vectors are {tuple(stack.shape[1:])} but default activations "
            f"{tuple(default_activations.shape[1:])}; build them on the same model"
        )
    default = default_activations.float().cpu()
    center = stack.mean(0)
    axis = default.mean(0) - center
    k = min(len(names) - 1, n_components or len(names) - 1)
    components = torch.zeros(stack.shape[1], k, stack.shape[2])
    explained = torch.zeros(stack.shape[1], k)
    for layer in range(stack.shape[1]):
        centred = (stack[:, layer] - center[layer]).double()
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        total = float((singular**2).sum())
        direction = vh[:k].float()
        signs = torch.sign(direction @ axis[layer])
        signs[signs == 0] = 1.0
        components[layer] = direction * signs[:, None]
        if total > 0:
            explained[layer] = (singular[:k] ** 2 / total).float()
    return PersonaSpace(
        model_name, names, default_role, stack, default, axis, center, components, explained, meta={"n_components": k}
    )


@torch.no_grad()
def _token_quantiles(
    model: HookedLM,
    units: Float[Tensor, "m layer d_model"],
    conversations: Sequence[EncodedConversation],
    batch_size: int,
) -> Float[Tensor, "m layer 101"]:
    """Percentiles 0..100 of every response token's projection on each of the ``m`` directions, per layer: one
    hook per layer reads the residual once and projects it on all ``m`` directions (not one hook per direction)."""
    n_directions, n_layers = units.shape[0], units.shape[1] - 1
    # normalised again as the capping hook normalises its direction, so thresholds are bit-equal to what it reads
    by_layer = unit_rows(units.detach().float()).transpose(0, 1).to(model.device)  # [layer m d_model]
    values: list[list[Float[Tensor, "tokens m"]]] = [[] for _ in range(n_layers + 1)]
    read: dict[int, Float[Tensor, "batch pos m"]] = {}

    def reader(layer: int) -> Callable[..., None]:
        def project(resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> None:
            # one matrix-vector product per direction, as the capping hook computes h . u (bit-equal thresholds)
            units_here = by_layer[layer].to(resid.dtype)
            read[layer] = torch.stack([(resid @ unit).float() for unit in units_here], dim=-1).cpu()

        return project

    hooks = [(hook_name(layer, n_layers), reader(layer)) for layer in range(n_layers + 1)]
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(conversations), batch_size):
        part = list(conversations[start : start + batch_size])
        batch = collate(part, int(pad if pad is not None else 0), model.device)
        read.clear()
        with install_hooks(model, hooks):
            model.run_blocks(batch.input_ids, batch.attention_mask)
        for layer, table in read.items():
            for row, conversation in enumerate(part):
                offset = int(batch.pad_lengths[row])  # left padding: token j sits in column offset + j
                values[layer].append(
                    table[row, offset + conversation.response_start : offset + conversation.response_end]
                )
    qs = torch.linspace(0, 1, 101)
    per_layer = [torch.cat(tables) for tables in values]  # [tokens m] each
    return torch.stack(
        [torch.stack([torch.quantile(tokens[:, m], qs) for tokens in per_layer]) for m in range(n_directions)]
    )


def default_token_quantiles(
    model: HookedLM, space: PersonaSpace, conversations: Sequence[EncodedConversation], *, batch_size: int = 8
) -> Float[Tensor, "layer 101"]:
    """Percentiles 0..100 of the per-token projections on the unit axis, over the response tokens of
    ``conversations`` (the default role's replies), at every layer."""
    return _token_quantiles(model, space.axis_unit()[None], conversations, batch_size)[0]


def cap_control_directions(space: PersonaSpace, k: int, *, seed: int = 0) -> Float[Tensor, "k layer d_model"]:
    """``k`` seeded random directions shaped like the axis, norm-matched to it at every layer
    (:func:`persona_lens.core.controls.random_like`): the capping control's directions."""
    return random_like(space.axis, k, seed=seed)


def build_space(
    model: HookedLM,
    roles: RoleSet,
    *,
    judges: Callable[[Role], JudgePair],
    config: SpaceConfig | None = None,
    out_dir: str | Path,
    progress: bool = False,
    only: Sequence[str] | None = None,
    skip_unplayed: bool = True,
    cap_controls: int = DEFAULT_CAP_CONTROLS,
    control_seed: int = 0,
    executor: Executor | None = None,
) -> PersonaSpace | None:
    """Every role's unit (:func:`build_role_vector`), then the space, saved to ``out_dir/space.safetensors``.

    ``judges(role)`` gives ``(role judge or None, coherence judge or None)``. With ``only``, just those roles' units
    are built and None is returned (a worker's share; run again without ``only`` to assemble). A non-default role
    with no kept reply is left out of the space and listed in ``space.meta["skipped"]`` (``skip_unplayed=False``:
    raise :class:`RoleNotPlayed` instead); the default role is never skipped.

    The default's per-token percentiles are stored along the axis and along ``cap_controls`` random directions
    (:func:`cap_control_directions` with ``control_seed``; 0: none), for capping and its control. ``executor`` runs
    the generate calls elsewhere (:mod:`persona_lens.experiments.executor`, e.g. Ray workers); the results are
    those of the serial run.
    """
    config = config or SpaceConfig()
    questions = roles.questions.build
    vectors: dict[str, RoleVector] = {}
    skipped: dict[str, str] = {}
    for role in roles.roles:
        if only is not None and role.name not in only:
            continue
        judge, coherence = judges(role)
        try:
            vectors[role.name] = build_role_vector(
                model,
                role,
                questions,
                judge=judge,
                coherence_judge=coherence,
                config=config,
                out_dir=out_dir,
                progress=progress,
                executor=executor,
            )
        except RoleNotPlayed as error:
            if role.default or not skip_unplayed:
                raise
            skipped[role.name] = str(error)
    if only is not None:
        return None
    default = vectors[roles.default.name]
    space = fit_space(
        {name: v.mean for name, v in vectors.items()},
        default.activations,
        model_name=model.cfg.model_name,
        default_role=roles.default.name,
    )
    unit = _unit_dir(out_dir, roles.default.name)
    stored = JsonlRecords(unit / "responses.jsonl").load()
    units = space.axis_unit()[None]
    if cap_controls:
        units = torch.cat([units, unit_rows(cap_control_directions(space, cap_controls, seed=control_seed))])
    quantiles = _token_quantiles(
        model, units, [_encode_record(model, stored[key]) for key in default.kept_keys], config.batch_size
    )
    space.token_quantiles = quantiles[0]
    space.control_quantiles = quantiles[1:] if cap_controls else None
    space.meta.update(
        config=asdict(config),
        roles={name: v.report() for name, v in vectors.items()},
        skipped=skipped,
        cap_controls={"k": cap_controls, "seed": control_seed},
    )
    space.save(Path(out_dir) / "space.safetensors")
    return space


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return math.nan if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def axis_alignment(
    space: PersonaSpace,
    *,
    traits: Mapping[str, Float[Tensor, "layer d_model"]] | None = None,
    k_random: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per layer: |cos(PC1, axis)| beside random directions and the other components (a :class:`Baseline`), the
    variance explained, and the cosine of each (centred) role and each trait vector with the axis and PC1 (each
    trait's |cos| with the axis beside random directions too)."""
    traits = dict(traits or {})
    layers = list(range(space.n_layers + 1)) if layers is None else [check_layer(lay, space.n_layers) for lay in layers]
    d_model = space.axis.shape[1]
    rows = []
    for layer in layers:
        axis, pcs = space.axis[layer], space.components[layer]
        randoms = random_directions(d_model, k_random, seed=seed + layer)
        random_cos = [abs(_cos(r, axis)) for r in randoms]
        pc1 = compare(
            "|cos(PC1, axis)|",
            abs(_cos(pcs[0], axis)),
            random_cos,
            others={f"PC{j + 1}": abs(_cos(pcs[j], axis)) for j in range(1, pcs.shape[0])},
        )
        role_rows = {
            name: {
                "cos_axis": _cos(space.role_vectors[i, layer] - space.center[layer], axis),
                "cos_pc1": _cos(space.role_vectors[i, layer] - space.center[layer], pcs[0]),
                "projection": float(space.role_vectors[i, layer] @ space.axis_unit()[layer]),
                "pc1": float((space.role_vectors[i, layer] - space.center[layer]) @ pcs[0]),
            }
            for i, name in enumerate(space.roles)
        }
        default_mean = space.default_mean[layer]
        role_rows[space.default_role] = {
            "cos_axis": _cos(default_mean - space.center[layer], axis),
            "cos_pc1": _cos(default_mean - space.center[layer], pcs[0]),
            "projection": float(default_mean @ space.axis_unit()[layer]),
            "pc1": float((default_mean - space.center[layer]) @ pcs[0]),
        }
        trait_rows = {}
        for name, vector in traits.items():
            v = vector.float().cpu()[layer]
            trait_rows[name] = {
                "cos_axis": _cos(v, axis),
                "cos_pc1": _cos(v, pcs[0]),
                "abs_cos_axis_vs_random": compare(f"|cos({name}, axis)|", abs(_cos(v, axis)), random_cos).to_dict(),
            }
        rows.append(
            {
                "layer": layer,
                "explained": space.explained[layer].tolist(),
                "pc1_axis": pc1.to_dict(),
                "pc1_axis_summary": pc1.summary(),
                "roles": role_rows,
                "traits": trait_rows,
            }
        )
    return {
        "model": space.model_name,
        "default_role": space.default_role,
        "roles": space.roles,
        "k_random": k_random,
        "seed": seed,
        "layers": rows,
    }


@dataclass
class SpanAlignment:
    """|cos(PC1, axis)| at one layer beside random directions drawn *within* the centred role vectors' span.

    PC1 lies in that span by construction, so random directions of all ``d_model`` only test that the axis lies
    near the span; this control asks whether PC1 is special *within* it. ``span_rank``: the span's dimension
    (at most the number of non-default roles minus 1); ``axis_share_in_span``: the share of the axis' norm that
    lies in the span (``|P_span axis| / |axis|``), which bounds every in-span direction's |cos| with the axis."""

    layer: int
    n_roles: int
    """Non-default roles in the fit."""
    value: float
    """|cos(PC1, axis)|."""
    random: list[float]
    """|cos(r, axis)| for each random unit direction r of the span."""
    span_rank: int
    axis_share_in_span: float
    verdict: ControlVerdict

    def summary(self) -> str:
        return (
            f"layer {self.layer}: |cos(PC1, axis)| vs {len(self.random)} random directions within the span of the "
            f"{self.n_roles} centred role vectors (rank {self.span_rank}; the axis has "
            f"{100 * self.axis_share_in_span:.1f}% of its norm in it): {self.verdict.summary()}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "n_roles": self.n_roles,
            "value": self.value,
            "span_rank": self.span_rank,
            "axis_share_in_span": self.axis_share_in_span,
            "verdict": self.verdict.to_dict(),
            "random": list(self.random),
        }


def measure_pc1_in_span(
    space: PersonaSpace,
    layer: int,
    *,
    k_random: int = 200,
    seed: int | None = None,
    percentile: float = 95.0,
) -> SpanAlignment:
    """|cos(PC1, axis)| at ``layer`` against ``k_random`` seeded random unit directions within the span of the
    centred non-default role vectors (:func:`persona_lens.core.controls.random_in_span`, seed ``layer`` unless
    given), two-sided by |cos| (the components' signs are a convention), through
    :func:`~persona_lens.core.controls.beats_controls` at ``percentile``."""
    layer = check_layer(layer, space.n_layers)
    axis = space.axis[layer].double()
    if float(axis.norm()) == 0.0:
        raise ValueError(f"the Assistant axis is zero at layer {layer}: no cosine with it is defined")
    centred = (space.role_vectors[:, layer] - space.center[layer]).double()  # [role, d_model]: PC1 lies in its span
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular > 1e-6 * max(float(singular.max()), 1e-30)).sum())
    if rank < 2:  # every direction of a line is +-PC1: the control would equal the value, a test of nothing
        raise ValueError(
            f"the centred role vectors span {rank} dimension(s) at layer {layer} ({len(space.roles)} roles): PC1 is "
            "the whole span, so random directions within it cannot test it; fit the space with at least 3 roles "
            "besides 'default' that differ"
        )
    in_span = random_in_span(centred.float(), k_random, seed=layer if seed is None else seed).double()
    unit_axis = axis / axis.norm()
    value = abs(float(space.components[layer, 0].double() @ unit_axis))
    random = (in_span @ unit_axis).abs().tolist()
    basis = vh[:rank]  # [rank, d_model], orthonormal
    share = float((basis @ unit_axis).norm())
    verdict = beats_controls(value, random, two_sided=True, percentile=percentile)
    return SpanAlignment(layer, len(space.roles), value, random, rank, share, verdict)
