"""Persona space (Lu et al. 2026, "The Assistant Axis"): role vectors, their PCA, the Assistant axis, drift over a
conversation, and activation capping along the axis calibrated from the default persona.

1. **Role vectors** (:func:`build_role_vector`, one resumable unit per role, so units can run in separate processes
   into one folder): replies to the shared questions under each of the role's system prompts, judged "in role" by
   the role's judge (through :func:`persona_lens.experiments.evaluate.evaluate_replies`, the one generate -> judge
   loop), the in-role and coherent ones kept; the role vector is the mean of their response-mean activations at
   every layer. The default role's kept replies are its activations. A role without a judge (``judge=None``: no rule
   under ``--judge rule``) keeps every coherent reply and says so (``judged: false``).
2. **The space** (:func:`fit_space`): per layer, PCA of the non-default role vectors (centred on their mean; the
   default role is *not* in the fit, so its place on PC1 is a finding, not a construction), variance explained and
   loadings; the **Assistant axis** = mean(default activations) - mean(role vectors). Each component's sign is chosen
   so the default role scores >= 0 on it.
3. **Alignment** (:func:`axis_alignment`): |cos(PC1, axis)| per layer beside the same number for seeded random
   directions (:mod:`persona_lens.core.controls`) and for the other components; the cosine of each role (centred)
   and each given trait vector with the axis and PC1.
4. **Drift** (:func:`project_conversation`): each assistant turn of a conversation projected on the axis (mean
   over the turn's response tokens, every layer) and per token (one layer); the drift (first turn minus last turn
   along the unit axis: positive = moving away from the Assistant) beside random directions; :func:`compare_drift`
   sets one conversation's drift beside a reference conversation's (paired, with its own random control).
5. **Capping** (:class:`CapSettings`, :func:`calibrate_cap`, :func:`apply_cap`): per-layer thresholds at a
   percentile of the default role's per-token projections, saved as one file; :func:`apply_cap` installs
   ``clamp(h . u_l, min=threshold_l)`` on a layer range (a handle that is also a context manager).
   :func:`evaluate_capping` measures in-role rates under role system prompts and persona-jailbreak prompts with and
   without capping, and how many default replies stay exactly the same.
6. **Capping control**: the same capping along seeded random directions (norm-matched to the axis, the same
   layers), each with thresholds at the same percentile of the default's per-token projections along *it*
   (:func:`cap_control_directions`; the space stores those projections' percentiles), evaluated beside the axis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import (
    EncodedConversation,
    Message,
    collate,
    encode_conversation,
    encode_generated,
    encode_prompt,
    make_messages,
    parse_messages,
    token_pieces,
)
from persona_lens.core.controls import DEFAULT_RANDOM_DIRECTIONS, Baseline, compare, random_directions, random_like
from persona_lens.core.errors import Error
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import (
    CapProjection,
    HookHandle,
    Positions,
    RecordProjection,
    TokenLayout,
    install_hooks,
    token_layout,
)
from persona_lens.core.io import JsonlRecords, atomic_output, check_settings, write_json_atomic
from persona_lens.core.layers import check_layer, hook_name
from persona_lens.core.vectors import unit_rows
from persona_lens.experiments.evaluate import (
    JUDGE_CHUNK,
    GenerationSettings,
    ReplyJob,
    evaluate_replies,
    job_seed,
)
from persona_lens.experiments.executor import Executor
from persona_lens.judges.base import Judge
from persona_lens.traits.roles import Role, RoleSet, role_to_dict

__all__ = [
    "SpaceConfig",
    "RoleNotPlayed",
    "RoleVector",
    "PersonaSpace",
    "CapSettings",
    "DriftResult",
    "CapEvalResult",
    "plan_role_jobs",
    "build_role_vector",
    "load_role_vector",
    "fit_space",
    "build_space",
    "axis_alignment",
    "default_token_quantiles",
    "cap_control_directions",
    "DEFAULT_CAP_CONTROLS",
    "conversation_turns",
    "turn_alone",
    "simulate_conversation",
    "project_conversation",
    "compare_drift",
    "calibrate_cap",
    "apply_cap",
    "evaluate_capping",
]

JudgePair = tuple["Judge | None", "Judge | None"]

DEFAULT_CAP_CONTROLS = 10
"""Random directions whose default per-token percentiles a space stores (the capping control's candidates)."""


class RoleNotPlayed(Error, ValueError):
    """No reply of a role passed the filters: the model does not play it under its prompts."""
_FORMAT = "persona_lens.space"


# ---------------------------------------------------------------------------------------------------------------------
# tensor files (one .safetensors, metadata as JSON in the header; written through core.io)


def _save_tensors(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any], kind: str) -> Path:
    data = safetensors.torch.save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                                  metadata={"format": _FORMAT, "kind": kind, "meta": json.dumps(meta)})
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _load_tensors(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (safetensors.SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a safetensors file ({error}); was it written by persona_lens?") from None
    if header.get("format") != _FORMAT or header.get("kind") != kind:
        raise ValueError(f"{path} is not a persona_lens {kind} file (format {header.get('format')!r}, kind "
                         f"{header.get('kind')!r}); pass the file `persona_lens space` wrote")
    return tensors, json.loads(header.get("meta", "{}"))


# ---------------------------------------------------------------------------------------------------------------------
# role vectors


@dataclass
class SpaceConfig(GenerationSettings):
    """How role replies are sampled and filtered. The paper: 5 prompts x 240 questions per role, judged fully in
    role; the defaults here are CPU-sized."""

    n_samples: int = 1
    max_new_tokens: int = 64
    batch_size: int = 16
    role_threshold: float = 50.0
    """A reply is in role when its role score is >= this."""
    coherence_threshold: float = 50.0
    n_questions: int | None = None
    """Use only the first ``n_questions`` build questions."""
    n_prompts: int | None = None
    """Use only the first ``n_prompts`` system prompts of each role."""


def plan_role_jobs(role: Role, questions: Sequence[str], config: SpaceConfig) -> list[ReplyJob]:
    """One reply per system prompt x question x sample; keys ``<role>|p<i>|q<j>|s<k>`` (stable seeds)."""
    jobs = []
    for p, system in enumerate(role.system_prompts[: config.n_prompts]):
        for q, question in enumerate(list(questions)[: config.n_questions]):
            for s in range(config.n_samples):
                key = f"{role.name}|p{p}|q{q}|s{s}"
                fields = {"role": role.name, "prompt": p, "question": q, "sample": s, "system": system,
                          "question_text": question}
                jobs.append(ReplyJob(key, make_messages(question, system=system), job_seed(config.seed, key), fields))
    return jobs


@dataclass
class RoleVector:
    """One role's mean response activation at every layer, from its kept replies."""

    role: str
    mean: Float[Tensor, "layer d_model"]
    n_kept: int
    n_replies: int
    judged: bool
    in_role_rate: float | None
    """Share of scored replies with role score >= threshold (None when unjudged)."""
    dropped: dict[str, int] = field(default_factory=dict)
    kept_keys: list[str] = field(default_factory=list)
    activations: Float[Tensor, "n layer d_model"] | None = None
    """Per kept reply (kept for the default role only: its spread is the default band)."""

    def report(self) -> dict[str, Any]:
        return {"role": self.role, "n_kept": self.n_kept, "n_replies": self.n_replies, "judged": self.judged,
                "in_role_rate": self.in_role_rate, "dropped": self.dropped, "kept_keys": self.kept_keys}


def _unit_dir(out_dir: str | Path, role: str) -> Path:
    return Path(out_dir) / "roles" / role


def _drop_reason(record: Mapping[str, Any], judged: bool, config: SpaceConfig) -> str | None:
    if not record.get("response_ids"):
        return "empty reply"
    if judged and record["trait_score"] is None:
        return "role score missing (refusal / judge failure / nothing to measure)"
    if judged and record["trait_score"] < config.role_threshold:
        return f"role score < {config.role_threshold:g}"
    coherence = record.get("coherence")
    if coherence is not None and coherence < config.coherence_threshold:
        return f"coherence < {config.coherence_threshold:g}"
    return None


def _encode_record(model: HookedLM, record: Mapping[str, Any]) -> EncodedConversation:
    messages = make_messages(record["question_text"], system=record["system"])
    return encode_generated(encode_prompt(model.tokenizer, messages), record["response_ids"])


def build_role_vector(model: HookedLM, role: Role, questions: Sequence[str], *, judge: Judge | None,
                      coherence_judge: Judge | None = None, config: SpaceConfig | None = None,
                      out_dir: str | Path, progress: bool = False, executor: Executor | None = None) -> RoleVector:
    """Generate, judge and average one role (a resumable unit under ``out_dir/roles/<name>/``).

    Replies go to ``responses.jsonl`` as they are made; the vector to ``vector.safetensors`` once done. Rerunning
    with the same settings costs nothing; other settings in the same folder are refused.
    """
    config = config or SpaceConfig()
    unit = _unit_dir(out_dir, role.name)
    check_settings(unit / "settings.json", {
        "model": model.cfg.model_name, "role": role_to_dict(role), "questions": list(questions),
        **config.generation_settings(), "n_samples": config.n_samples, "n_questions": config.n_questions,
        "n_prompts": config.n_prompts, "role_threshold": config.role_threshold,
        "coherence_threshold": config.coherence_threshold,
        "judge": None if judge is None else judge.judge_id,
        "coherence_judge": None if coherence_judge is None else coherence_judge.judge_id}, what=f"role {role.name}")
    if (unit / "vector.safetensors").exists():
        return load_role_vector(unit)
    jobs = plan_role_jobs(role, questions, config)
    if not jobs:
        raise ValueError(f"role {role.name!r}: nothing to generate (no system prompt or no question)")
    records = evaluate_replies(model, jobs, config, role.rubric, judge, coherence_judge,  # type: ignore[arg-type]
                               store=JsonlRecords(unit / "responses.jsonl"), chunk=config.batch_size,
                               judge_chunk=JUDGE_CHUNK, progress=progress, desc=f"role {role.name}", executor=executor)
    judged = judge is not None
    kept, dropped = [], {}
    for job in jobs:
        record = records[job.key]
        reason = _drop_reason(record, judged, config)
        if reason is None:
            kept.append(record)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    scores = [records[job.key]["trait_score"] for job in jobs if records[job.key]["trait_score"] is not None]
    rate = (sum(s >= config.role_threshold for s in scores) / len(scores)) if judged and scores else None
    if not kept:
        raise RoleNotPlayed(f"role {role.name!r}: no reply was kept ({dropped}); the model does not play the role "
                            "under these prompts. Try more samples, other prompts, or a lower --role-threshold")
    acts = collect_activations(model, [_encode_record(model, r) for r in kept], reductions=("response",),
                               batch_size=config.batch_size, progress=progress,
                               desc=f"role {role.name}: activations").get("response")
    vector = RoleVector(role.name, acts.mean(0), len(kept), len(jobs), judged, rate, dropped,
                        [r["key"] for r in kept], acts if role.default else None)
    tensors = {"mean": vector.mean} | ({"activations": acts} if role.default else {})
    _save_tensors(unit / "vector.safetensors", tensors, vector.report() | {"default": role.default}, "role_vector")
    write_json_atomic(unit / "report.json", vector.report())
    return vector


def load_role_vector(unit: str | Path) -> RoleVector:
    """A role vector saved by :func:`build_role_vector` (``unit`` = its folder or its ``vector.safetensors``)."""
    path = Path(unit)
    path = path / "vector.safetensors" if path.is_dir() else path
    tensors, meta = _load_tensors(path, "role_vector")
    return RoleVector(meta["role"], tensors["mean"], meta["n_kept"], meta["n_replies"], meta["judged"],
                      meta["in_role_rate"], meta["dropped"], meta["kept_keys"], tensors.get("activations"))


# ---------------------------------------------------------------------------------------------------------------------
# the space


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

    def default_band(self, low: float = 5.0, high: float = 95.0) -> tuple[Float[Tensor, " layer"],
                                                                          Float[Tensor, " layer"]]:
        """Per-layer ``low``/``high`` percentiles of the default replies' (response-mean) axis projections."""
        projections = self.project(self.default_activations).numpy()
        return (torch.from_numpy(np.percentile(projections, low, axis=0)).float(),
                torch.from_numpy(np.percentile(projections, high, axis=0)).float())

    def save(self, path: str | Path) -> Path:
        tensors = {"role_vectors": self.role_vectors, "default_activations": self.default_activations,
                   "axis": self.axis, "center": self.center, "components": self.components,
                   "explained": self.explained}
        if self.token_quantiles is not None:
            tensors["token_quantiles"] = self.token_quantiles
        if self.control_quantiles is not None:
            tensors["control_quantiles"] = self.control_quantiles
        meta = {"model_name": self.model_name, "roles": self.roles, "default_role": self.default_role,
                "meta": self.meta}
        return _save_tensors(Path(path), tensors, meta, "space")

    @classmethod
    def load(cls, path: str | Path) -> PersonaSpace:
        tensors, meta = _load_tensors(Path(path), "space")
        return cls(meta["model_name"], meta["roles"], meta["default_role"], tensors["role_vectors"],
                   tensors["default_activations"], tensors["axis"], tensors["center"], tensors["components"],
                   tensors["explained"], tensors.get("token_quantiles"), meta.get("meta", {}),
                   tensors.get("control_quantiles"))


def fit_space(role_vectors: Mapping[str, Float[Tensor, "layer d_model"]],
              default_activations: Float[Tensor, "n layer d_model"], *, default_role: str = "default",
              model_name: str = "", n_components: int | None = None) -> PersonaSpace:
    """PCA per layer of the role vectors (``default_role`` left out of the fit) and the Assistant axis."""
    names = [name for name in role_vectors if name != default_role]
    if len(names) < 2:
        raise ValueError(f"a persona space needs at least 2 roles besides {default_role!r}, got {names}")
    if default_activations.ndim != 3 or default_activations.shape[0] < 1:
        raise ValueError(f"default_activations must be [n >= 1, layer, d_model], got "
                         f"{tuple(default_activations.shape)}")
    stack = torch.stack([role_vectors[name].float().cpu() for name in names])  # [role, layer, d]
    if stack.shape[1:] != default_activations.shape[1:]:
        raise ValueError(f"role vectors are {tuple(stack.shape[1:])} but default activations "
                         f"{tuple(default_activations.shape[1:])}; build them on the same model")
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
    return PersonaSpace(model_name, names, default_role, stack, default, axis, center, components, explained,
                        meta={"n_components": k})


@torch.no_grad()
def _token_quantiles(model: HookedLM, units: Float[Tensor, "m layer d_model"],
                     conversations: Sequence[EncodedConversation], batch_size: int) -> Float[Tensor, "m layer 101"]:
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
                values[layer].append(table[row, offset + conversation.response_start : offset
                                           + conversation.response_end])
    qs = torch.linspace(0, 1, 101)
    per_layer = [torch.cat(tables) for tables in values]  # [tokens m] each
    return torch.stack([torch.stack([torch.quantile(tokens[:, m], qs) for tokens in per_layer])
                        for m in range(n_directions)])


def default_token_quantiles(model: HookedLM, space: PersonaSpace, conversations: Sequence[EncodedConversation], *,
                            batch_size: int = 8) -> Float[Tensor, "layer 101"]:
    """Percentiles 0..100 of the per-token projections on the unit axis, over the response tokens of
    ``conversations`` (the default role's replies), at every layer."""
    return _token_quantiles(model, space.axis_unit()[None], conversations, batch_size)[0]


def cap_control_directions(space: PersonaSpace, k: int, *, seed: int = 0) -> Float[Tensor, "k layer d_model"]:
    """``k`` seeded random directions shaped like the axis, norm-matched to it at every layer
    (:func:`persona_lens.core.controls.random_like`): the capping control's directions."""
    return random_like(space.axis, k, seed=seed)


def build_space(model: HookedLM, roles: RoleSet, *, judges: Callable[[Role], JudgePair],
                config: SpaceConfig | None = None, out_dir: str | Path, progress: bool = False,
                only: Sequence[str] | None = None, skip_unplayed: bool = True,
                cap_controls: int = DEFAULT_CAP_CONTROLS, control_seed: int = 0,
                executor: Executor | None = None) -> PersonaSpace | None:
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
            vectors[role.name] = build_role_vector(model, role, questions, judge=judge, coherence_judge=coherence,
                                                   config=config, out_dir=out_dir, progress=progress,
                                                   executor=executor)
        except RoleNotPlayed as error:
            if role.default or not skip_unplayed:
                raise
            skipped[role.name] = str(error)
    if only is not None:
        return None
    default = vectors[roles.default.name]
    space = fit_space({name: v.mean for name, v in vectors.items()}, default.activations, model_name=
                      model.cfg.model_name, default_role=roles.default.name)
    unit = _unit_dir(out_dir, roles.default.name)
    stored = JsonlRecords(unit / "responses.jsonl").load()
    units = space.axis_unit()[None]
    if cap_controls:
        units = torch.cat([units, unit_rows(cap_control_directions(space, cap_controls, seed=control_seed))])
    quantiles = _token_quantiles(model, units, [_encode_record(model, stored[key]) for key in default.kept_keys],
                                 config.batch_size)
    space.token_quantiles = quantiles[0]
    space.control_quantiles = quantiles[1:] if cap_controls else None
    space.meta.update(config=asdict(config), roles={name: v.report() for name, v in vectors.items()},
                      skipped=skipped, cap_controls={"k": cap_controls, "seed": control_seed})
    space.save(Path(out_dir) / "space.safetensors")
    return space


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return math.nan if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def axis_alignment(space: PersonaSpace, *, traits: Mapping[str, Float[Tensor, "layer d_model"]] | None = None,
                   k_random: int = DEFAULT_RANDOM_DIRECTIONS, seed: int = 0, layers: Sequence[int] | None = None
                   ) -> dict[str, Any]:
    """Per layer: |cos(PC1, axis)| beside random directions and the other components (a :class:`Baseline`), the
    variance explained, and the cosine of each (centred) role and each trait vector with the axis and PC1 (each
    trait's |cos| with the axis beside random directions too)."""
    traits = dict(traits or {})
    layers = list(range(space.n_layers + 1)) if layers is None else [check_layer(lay, space.n_layers)
                                                                        for lay in layers]
    d_model = space.axis.shape[1]
    rows = []
    for layer in layers:
        axis, pcs = space.axis[layer], space.components[layer]
        randoms = random_directions(d_model, k_random, seed=seed + layer)
        random_cos = [abs(_cos(r, axis)) for r in randoms]
        pc1 = compare("|cos(PC1, axis)|", abs(_cos(pcs[0], axis)), random_cos,
                      others={f"PC{j + 1}": abs(_cos(pcs[j], axis)) for j in range(1, pcs.shape[0])})
        role_rows = {name: {"cos_axis": _cos(space.role_vectors[i, layer] - space.center[layer], axis),
                            "cos_pc1": _cos(space.role_vectors[i, layer] - space.center[layer], pcs[0]),
                            "projection": float(space.role_vectors[i, layer] @ space.axis_unit()[layer]),
                            "pc1": float((space.role_vectors[i, layer] - space.center[layer]) @ pcs[0])}
                     for i, name in enumerate(space.roles)}
        default_mean = space.default_mean[layer]
        role_rows[space.default_role] = {"cos_axis": _cos(default_mean - space.center[layer], axis),
                                         "cos_pc1": _cos(default_mean - space.center[layer], pcs[0]),
                                         "projection": float(default_mean @ space.axis_unit()[layer]),
                                         "pc1": float((default_mean - space.center[layer]) @ pcs[0])}
        trait_rows = {}
        for name, vector in traits.items():
            v = vector.float().cpu()[layer]
            trait_rows[name] = {"cos_axis": _cos(v, axis), "cos_pc1": _cos(v, pcs[0]),
                                "abs_cos_axis_vs_random": compare(f"|cos({name}, axis)|", abs(_cos(v, axis)),
                                                                  random_cos).to_dict()}
        rows.append({"layer": layer, "explained": space.explained[layer].tolist(), "pc1_axis": pc1.to_dict(),
                     "pc1_axis_summary": pc1.summary(), "roles": role_rows, "traits": trait_rows})
    return {"model": space.model_name, "default_role": space.default_role, "roles": space.roles,
            "k_random": k_random, "seed": seed, "layers": rows}


# ---------------------------------------------------------------------------------------------------------------------
# drift over a conversation


def conversation_turns(messages: Sequence[Message]) -> list[tuple[list[Message], str]]:
    """``(messages before the turn, the assistant's reply)`` for every assistant turn; a clear error when the
    conversation has none or a turn does not follow a user message."""
    checked = parse_messages({"messages": list(messages)})
    if isinstance(checked, str):
        raise ValueError(f"conversation: {checked}")
    turns = []
    for index, message in enumerate(checked):
        if message["role"] != "assistant":
            continue
        if index == 0 or checked[index - 1]["role"] != "user":
            raise ValueError(f"conversation: messages[{index}] (assistant) does not follow a user message")
        turns.append((checked[:index], message["content"]))
    if not turns:
        raise ValueError("conversation: no assistant turn to project; give replies, or user prompts to generate "
                         "them (simulate_conversation)")
    return turns


def simulate_conversation(model: HookedLM, user_turns: Sequence[str], *, system: str | None = None,
                          max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> list[Message]:
    """A conversation generated turn by turn: each of ``user_turns`` in order, the model's reply after each."""
    if not user_turns:
        raise ValueError("simulate_conversation needs at least one user turn")
    messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    for index, user in enumerate(user_turns):
        messages.append({"role": "user", "content": user})
        out = generate(model, [messages], max_new_tokens=max_new_tokens, temperature=temperature,
                       seeds=[seed + index])
        reply = out.texts[0].strip() or "..."
        messages.append({"role": "assistant", "content": reply})
    return messages


@dataclass
class DriftResult:
    """Each assistant turn on the Assistant axis: per turn (every layer) and per token (at ``layer``)."""

    layer: int
    messages: list[Message]
    turn_projections: Float[Tensor, "turn layer"]
    token_projections: list[list[float]]
    token_pieces: list[list[str]]
    default_band: tuple[list[float], list[float]]
    """5th and 95th percentiles of the default replies' projections, per layer."""
    drift: Baseline
    """First turn minus last turn along the unit axis at ``layer`` (positive = away from the Assistant), beside
    random directions of the same norm."""
    change: Float[Tensor, " d_model"] | None = None
    """The first minus the last turn's response-mean activation at ``layer`` (what ``drift`` projects)."""
    alone: bool = False
    """Whether every turn was projected without the turns before it (``project_conversation(alone=True)``)."""

    def turns_in_band(self) -> list[bool]:
        """For every turn, whether its projection at ``layer`` lies inside the default persona's 5-95% band."""
        low, high = self.default_band[0][self.layer], self.default_band[1][self.layer]
        return [low <= float(v) <= high for v in self.turn_projections[:, self.layer]]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "alone": self.alone, "messages": self.messages,
                "turn_projections": self.turn_projections.tolist(),
                "turn_projections_at_layer": self.turn_projections[:, self.layer].tolist(),
                "token_projections": self.token_projections, "token_pieces": self.token_pieces,
                "default_band": {"p5": self.default_band[0], "p95": self.default_band[1]},
                "turns_in_band": self.turns_in_band(), "drift": self.drift.to_dict(),
                "drift_summary": self.drift.summary()}


@torch.no_grad()
def _token_projections(model: HookedLM, encoded: Sequence[EncodedConversation], unit: Tensor, layer: int
                       ) -> list[list[float]]:
    pad = model.tokenizer.pad_token_id
    batch = collate(list(encoded), int(pad if pad is not None else 0), model.device)
    recorder = RecordProjection(unit, "all")
    layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=torch.arange(len(encoded)))
    with install_hooks(model, [(hook_name(layer, model.cfg.n_layers), recorder)]), token_layout(layout):
        model.run_blocks(batch.input_ids, batch.attention_mask, stop_at_layer=layer)
    table = recorder.projections()
    return [table[row, e.response_start : e.response_end].tolist() for row, e in enumerate(encoded)]


def turn_alone(before: Sequence[Message]) -> list[Message]:
    """What a turn's reply is encoded after when it stands alone: the conversation's system prompt (if any) and the
    turn's own user message, without the turns before it."""
    system = [dict(m) for m in before[:1] if m["role"] == "system"]
    return [*system, dict(before[-1])]


def project_conversation(model: HookedLM, space: PersonaSpace, messages: Sequence[Message], *, layer: int,
                         k_random: int = DEFAULT_RANDOM_DIRECTIONS, seed: int = 0, alone: bool = False
                         ) -> DriftResult:
    """Project every assistant turn of ``messages`` on the axis (see :class:`DriftResult`).

    Each turn is encoded with the conversation before it (exact token boundary, :func:`encode_conversation`); its
    per-turn value is the mean over its response tokens, read at every layer; per-token values at ``layer``.

    ``alone=True`` encodes every turn without the turns before it (:func:`turn_alone`: its system prompt and user
    message only). As the reference of :func:`compare_drift` it separates what the conversation's context adds
    (a model that slides with the turn count) from what each turn carries itself (its question and reply): the same
    turns, alone, drift by their content only.
    """
    check_layer(layer, space.n_layers)
    turns = conversation_turns(messages)
    if alone:
        turns = [(turn_alone(before), reply) for before, reply in turns]
    encoded = [encode_conversation(model.tokenizer, before, reply) for before, reply in turns]
    acts = collect_activations(model, encoded, reductions=("response",), progress=False).get("response")
    per_turn = space.project(acts)
    units = space.axis_unit()
    tokens = _token_projections(model, encoded, units[layer], layer)
    pieces = [token_pieces(model.tokenizer, list(e.response_ids)) for e in encoded]
    low, high = space.default_band()
    randoms = random_directions(space.axis.shape[1], k_random, seed=seed + layer)
    first, last = acts[0, layer], acts[-1, layer]
    random_drift = (randoms @ (first - last)).tolist()
    drift = compare("drift (first - last turn on the axis)", float(per_turn[0, layer] - per_turn[-1, layer]),
                    random_drift)
    return DriftResult(layer, [dict(m) for m in messages], per_turn, tokens, pieces, (low.tolist(), high.tolist()),
                       drift, first - last, alone)


def compare_drift(result: DriftResult | Sequence[DriftResult], reference: DriftResult | Sequence[DriftResult], *,
                  k_random: int = DEFAULT_RANDOM_DIRECTIONS, seed: int = 0) -> Baseline:
    """How much more ``result`` drifts than ``reference`` (e.g. an ordinary conversation with the same user turns),
    beside random directions: the value is ``result.drift - reference.drift``, each random value the same difference
    along a random unit direction. A paired control: drift that both conversations share (a model that slides with
    the turn count alone) cancels. With the same conversation's turns projected alone as the reference
    (``project_conversation(alone=True)``) the value is what the context adds: the turns' own content cancels.

    Sequences of results and references (paired in order) give the mean difference over the pairs, beside the mean
    along each of the same random directions: whether the conversations drift *on average*, where one pair's
    difference can go either way."""
    results = [result] if isinstance(result, DriftResult) else list(result)
    references = [reference] if isinstance(reference, DriftResult) else list(reference)
    if not results or len(results) != len(references):
        raise ValueError(f"compare_drift pairs results with references: got {len(results)} and {len(references)}")
    layers = {r.layer for r in (*results, *references)}
    if len(layers) != 1:
        raise ValueError(f"the drifts were read at layers {sorted(layers)}; project every conversation at one layer")
    if any(r.change is None for r in (*results, *references)):
        raise ValueError("compare_drift needs DriftResults from project_conversation (with their change vectors)")
    difference = torch.stack([r.change - ref.change for r, ref in zip(results, references)]).mean(0)
    value = float(np.mean([r.drift.value - ref.drift.value for r, ref in zip(results, references)]))
    randoms = random_directions(difference.shape[0], k_random, seed=seed + results[0].layer)
    alone = all(ref.alone for ref in references)
    name = "drift - the same turns' drift alone" if alone else "drift - reference drift"
    if len(results) > 1:
        name = f"mean over {len(results)} conversations of {name}"
    return compare(name, value, (randoms @ difference).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# capping


@dataclass
class CapSettings:
    """Capping along the Assistant axis: at each of ``layers``, ``h . u_l`` is kept >= ``thresholds[l]``.

    ``control_directions`` / ``control_thresholds``: the same capping along ``k`` random directions (the control,
    :meth:`control`), each threshold at the same percentile of the default's projections along that direction."""

    model_name: str
    layers: list[int]
    thresholds: list[float]
    directions: Float[Tensor, "n d_model"]
    """Unit axis at each of ``layers``."""
    percentile: float
    positions: str = "response"
    n_layers: int = 0
    control_directions: Float[Tensor, "k n d_model"] | None = None
    """Unit random directions at each of ``layers`` (None: no control calibrated)."""
    control_thresholds: list[list[float]] = field(default_factory=list)
    control_seed: int = 0

    @property
    def n_controls(self) -> int:
        return 0 if self.control_directions is None else int(self.control_directions.shape[0])

    def control(self, index: int) -> CapSettings:
        """The capping of random direction ``index`` (same layers, positions and percentile), as settings."""
        if not 0 <= index < self.n_controls:
            raise IndexError(f"control {index} of {self.n_controls}; calibrate with k_random > {index}")
        return CapSettings(self.model_name, list(self.layers), list(self.control_thresholds[index]),
                           self.control_directions[index].clone(), self.percentile, self.positions, self.n_layers)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (the directions left out)."""
        return {"layers": self.layers, "thresholds": self.thresholds, "percentile": self.percentile,
                "positions": self.positions, "control_thresholds": self.control_thresholds,
                "control_seed": self.control_seed}

    def save(self, path: str | Path) -> Path:
        meta = {"model_name": self.model_name, "layers": self.layers, "thresholds": self.thresholds,
                "percentile": self.percentile, "positions": self.positions, "n_layers": self.n_layers,
                "control_thresholds": self.control_thresholds, "control_seed": self.control_seed}
        tensors = {"directions": self.directions}
        if self.control_directions is not None:
            tensors["control_directions"] = self.control_directions
        return _save_tensors(Path(path), tensors, meta, "cap")

    @classmethod
    def load(cls, path: str | Path) -> CapSettings:
        tensors, meta = _load_tensors(Path(path), "cap")
        return cls(meta["model_name"], meta["layers"], meta["thresholds"], tensors["directions"], meta["percentile"],
                   meta["positions"], meta["n_layers"], tensors.get("control_directions"),
                   meta.get("control_thresholds", []), meta.get("control_seed", 0))


def _at_percentile(quantiles: Float[Tensor, "layer 101"], layer: int, percentile: float) -> float:
    qs = torch.linspace(0, 100, quantiles.shape[-1])
    return float(np.interp(percentile, qs.numpy(), quantiles[layer].numpy()))


def calibrate_cap(space: PersonaSpace, layers: Sequence[int], *, percentile: float = 25.0,
                  positions: str = "response", k_random: int = 0) -> CapSettings:
    """Thresholds per layer at ``percentile`` of the default role's per-token projections (the paper: layers
    46-54 of Qwen3-32B at the 25th percentile).

    ``positions``: where the cap acts, ``"response"`` (the reply's tokens, where the thresholds were read) or
    ``"all"`` (every position, the prompt's too, as the assistant-axis code caps).
    ``k_random``: also calibrate the control, the first ``k_random`` of the space's random directions
    (:func:`cap_control_directions`), each threshold at ``percentile`` of the default's projections along it."""
    if space.token_quantiles is None:
        raise ValueError("this persona space has no per-token default projections; rebuild it with build_space")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    layers = [check_layer(int(layer), space.n_layers) for layer in layers]
    if not layers:
        raise ValueError("calibrate_cap needs at least one layer")
    if k_random < 0:
        raise ValueError(f"k_random must be >= 0, got {k_random}")
    if positions not in ("response", "all", "prompt"):
        raise ValueError(f"positions must be 'response', 'all' or 'prompt', got {positions!r}")
    thresholds = [_at_percentile(space.token_quantiles, layer, percentile) for layer in layers]
    units = space.axis_unit()
    settings = CapSettings(space.model_name, layers, thresholds, units[layers].clone(), float(percentile), positions,
                           space.n_layers)
    if k_random:
        stored = 0 if space.control_quantiles is None else int(space.control_quantiles.shape[0])
        if k_random > stored:
            raise ValueError(f"the space stores the default's projections along {stored} random directions, "
                             f"k_random={k_random} asks for more; use k_random <= {stored} or rebuild the space "
                             f"with build_space(cap_controls={k_random})")
        seed = int(space.meta.get("cap_controls", {}).get("seed", 0))
        directions = unit_rows(cap_control_directions(space, stored, seed=seed)[:k_random])
        settings.control_directions = directions[:, layers].clone()
        settings.control_thresholds = [[_at_percentile(space.control_quantiles[j], layer, percentile)
                                        for layer in layers] for j in range(k_random)]
        settings.control_seed = seed
    return settings


def apply_cap(model: Any, settings: CapSettings) -> HookHandle:
    """Install the capping of ``settings`` (a removable handle and a context manager)."""
    n_layers = int(model.cfg.n_layers)
    if settings.n_layers and settings.n_layers != n_layers:
        raise ValueError(f"the cap settings are for a model with {settings.n_layers} layers, this one has "
                         f"{n_layers}; calibrate on this model")
    positions: Positions = settings.positions  # type: ignore[assignment]
    return install_hooks(model, [(hook_name(layer, n_layers), CapProjection(direction, threshold, None, positions))
                                 for layer, threshold, direction in zip(settings.layers, settings.thresholds,
                                                                        settings.directions)])


@dataclass
class CapEvalResult:
    """In-role rates with and without capping, per role and prompt kind, and how default replies fare; beside the
    same capping along random directions (``control``: pooled figures as :class:`Baseline` dicts)."""

    rows: list[dict[str, Any]]
    default: dict[str, Any]
    settings: dict[str, Any]
    control: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "default": self.default, "settings": self.settings, "control": self.control}


def _rate(records: Sequence[Mapping[str, Any]], threshold: float) -> tuple[float | None, int]:
    scores = [r["trait_score"] for r in records if r["trait_score"] is not None]
    return (sum(s >= threshold for s in scores) / len(scores) if scores else None), len(scores)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _pooled(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[int, int]:
    """(in-role replies, scored replies) over every row, for condition ``name``."""
    hits = sum(round(row[f"in_role_rate_{name}"] * row[f"n_scored_{name}"]) for row in rows
               if row[f"in_role_rate_{name}"] is not None)
    return hits, sum(row[f"n_scored_{name}"] for row in rows)


def evaluate_capping(model: HookedLM, roles: RoleSet, settings: CapSettings, *, judges: Callable[[Role], JudgePair],
                     config: SpaceConfig | None = None, out_dir: str | Path, jailbreaks: bool = True,
                     k_random: int | None = None, progress: bool = False) -> CapEvalResult:
    """Replies to the eval questions under each judged role's system prompts (and jailbreak prompts), with and
    without capping: the in-role rate of each (share with role score >= threshold; the rest stay in the default
    persona); and the default role's replies with and without capping (exact match, common token prefix).

    The control: the same replies under capping along each of the first ``k_random`` random directions of
    ``settings`` (None: all it holds; :func:`calibrate_cap` with ``k_random``), reported per row
    (``in_role_rate_random``, ``exact_match_rate_random``) and pooled in ``control``: the drop of the pooled
    in-role rate under the axis beside the drops under the random directions, and the default's exact-match rate
    beside theirs.

    Greedy decoding (``temperature=0``) makes "unchanged" an exact statement; the config's temperature is used.
    """
    config = config or SpaceConfig(temperature=0.0)
    k = settings.n_controls if k_random is None else k_random
    if not 0 <= k <= settings.n_controls:
        raise ValueError(f"k_random={k_random}: the cap settings hold {settings.n_controls} random directions; "
                         "calibrate more (calibrate_cap k_random, `space cap --controls`) or ask for fewer")
    out = Path(out_dir)
    check_settings(out / "settings.json", {"model": model.cfg.model_name, "cap": {
        "layers": settings.layers, "thresholds": settings.thresholds, "percentile": settings.percentile,
        "positions": settings.positions}, **config.generation_settings(), "n_questions": config.n_questions,
        "n_prompts": config.n_prompts, "jailbreaks": jailbreaks,
        "controls": {"thresholds": settings.control_thresholds[:k], "seed": settings.control_seed}},
        what="capping evaluation")
    questions = list(roles.questions.eval or roles.questions.build)[: config.n_questions]
    conditions: list[tuple[str, CapSettings | None]] = [("uncapped", None), ("capped", settings)]
    conditions += [(f"random{j}", settings.control(j)) for j in range(k)]
    rows = []
    for role in roles.others:
        judge, coherence = judges(role)
        if judge is None:
            continue
        kinds = [("system", [(p, make_messages(q, system=s), q) for p, s in
                             enumerate(role.system_prompts[: config.n_prompts]) for q in questions])]
        if jailbreaks and role.jailbreaks:
            kinds.append(("jailbreak", [(p, make_messages(t.replace("{question}", q)), q)
                                        for p, t in enumerate(role.jailbreaks[: config.n_prompts]) for q in questions]))
        for kind, prompts in kinds:
            row: dict[str, Any] = {"role": role.name, "prompts": kind, "n": len(prompts)}
            jobs = [ReplyJob(f"{role.name}|{kind}|p{p}|q{i % max(len(questions), 1)}", messages,
                             job_seed(config.seed, f"{role.name}|{kind}|{i}"),
                             {"role": role.name, "kind": kind, "question_text": q})
                    for i, (p, messages, q) in enumerate(prompts)]
            for name, capping in conditions:
                with apply_cap(model, capping) if capping is not None else nullcontext():
                    records = evaluate_replies(model, jobs, config, role.rubric, judge, coherence,
                                               store=JsonlRecords(out / f"{name}.jsonl"), chunk=config.batch_size,
                                               progress=progress, desc=f"cap-eval {role.name} {kind} {name}")
                rate, scored = _rate([records[j.key] for j in jobs], config.role_threshold)
                row[f"in_role_rate_{name}"] = rate
                row[f"n_scored_{name}"] = scored
                if name in ("uncapped", "capped"):
                    row[f"examples_{name}"] = [records[j.key]["response"] for j in jobs[:2]]
            row["in_role_rate_random"] = [row[f"in_role_rate_random{j}"] for j in range(k)]
            rows.append(row)
    default = roles.default
    prompts = [(make_messages(q, system=s)) for s in default.system_prompts[: config.n_prompts] for q in questions]
    replies = {}
    for name, capping in conditions:
        with apply_cap(model, capping) if capping is not None else nullcontext():
            replies[name] = generate(model, prompts, max_new_tokens=config.max_new_tokens,
                                     temperature=config.temperature, seeds=[job_seed(config.seed, f"default|{i}")
                                                                             for i in range(len(prompts))],
                                     batch_size=config.batch_size)

    def exact(name: str) -> list[bool]:
        return [a == b for a, b in zip(replies["uncapped"].response_ids, replies[name].response_ids)]

    same = exact("capped")
    prefix = [_common_prefix(a, b) / max(len(a), 1) for a, b in zip(replies["uncapped"].response_ids,
                                                                     replies["capped"].response_ids)]
    changed = [{"prompt": p[-1]["content"], "uncapped": a, "capped": b}
               for p, a, b, s in zip(prompts, replies["uncapped"].texts, replies["capped"].texts, same) if not s]
    random_exact = [sum(exact(f"random{j}")) / max(len(prompts), 1) for j in range(k)]
    default_row = {"role": default.name, "n": len(prompts), "exact_match_rate": sum(same) / max(len(same), 1),
                   "mean_common_prefix": sum(prefix) / max(len(prefix), 1), "changed_examples": changed[:3],
                   "exact_match_rate_random": random_exact}
    control: dict[str, Any] = {"k_random": k}
    hits, scored = _pooled(rows, "uncapped")
    if rows and scored:
        uncapped = hits / scored
        pooled = {name: _pooled(rows, name) for name, _ in conditions}
        rates = {name: (h / n if n else math.nan) for name, (h, n) in pooled.items()}
        control["pooled"] = {name: {"in_role": h, "scored": n, "rate": rates[name]} for name, (h, n) in pooled.items()}
        control["drop"] = compare("pooled in-role rate drop (uncapped - capped)", uncapped - rates["capped"],
                                  [uncapped - rates[f"random{j}"] for j in range(k)]).to_dict()
    control["default_exact_match"] = compare("default replies exactly unchanged", default_row["exact_match_rate"],
                                             random_exact).to_dict()
    result = CapEvalResult(rows, default_row, {**settings.describe(), "config": asdict(config)}, control)
    write_json_atomic(out / "cap_eval.json", result.to_json())
    return result
