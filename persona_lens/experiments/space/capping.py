"""Capping along the axis (topics 5 and 6 of :mod:`persona_lens.experiments.space`): per-layer thresholds at a
percentile of the default role's per-token projections (:class:`CapSettings`, :func:`calibrate_cap`),
:func:`apply_cap`, and :func:`evaluate_capping` beside the same capping along random directions."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.chat import make_messages
from persona_lens.core.controls import compare
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import CapProjection, Positions, install_hooks
from persona_lens.core.io import JsonlRecords, check_settings, write_json_atomic
from persona_lens.core.layers import check_layer, hook_name
from persona_lens.core.results import read_json
from persona_lens.core.vectors import unit_rows
from persona_lens.experiments.evaluate import ReplyJob, generate_replies, job_seed, judge_replies
from persona_lens.experiments.executor import Executor
from persona_lens.experiments.space.fit import PersonaSpace, cap_control_directions
from persona_lens.experiments.space.roles import JudgePair, SpaceConfig
from persona_lens.experiments.space.storage import _load_tensors, _save_tensors
from persona_lens.traits.roles import Role, RoleSet

__all__ = ["CapEvalResult", "CapSettings", "apply_cap", "calibrate_cap", "evaluate_capping"]


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
        return CapSettings(
            self.model_name,
            list(self.layers),
            list(self.control_thresholds[index]),
            self.control_directions[index].clone(),
            self.percentile,
            self.positions,
            self.n_layers,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (the directions left out)."""
        return {
            "layers": self.layers,
            "thresholds": self.thresholds,
            "percentile": self.percentile,
            "positions": self.positions,
            "control_thresholds": self.control_thresholds,
            "control_seed": self.control_seed,
        }

    def save(self, path: str | Path) -> Path:
        meta = {
            "model_name": self.model_name,
            "layers": self.layers,
            "thresholds": self.thresholds,
            "percentile": self.percentile,
            "positions": self.positions,
            "n_layers": self.n_layers,
            "control_thresholds": self.control_thresholds,
            "control_seed": self.control_seed,
        }
        tensors = {"directions": self.directions}
        if self.control_directions is not None:
            tensors["control_directions"] = self.control_directions
        return _save_tensors(Path(path), tensors, meta, "cap")

    @classmethod
    def load(cls, path: str | Path) -> CapSettings:
        tensors, meta = _load_tensors(Path(path), "cap")
        return cls(
            meta["model_name"],
            meta["layers"],
            meta["thresholds"],
            tensors["directions"],
            meta["percentile"],
            meta["positions"],
            meta["n_layers"],
            tensors.get("control_directions"),
            meta.get("control_thresholds", []),
            meta.get("control_seed", 0),
        )


def _at_percentile(quantiles: Float[Tensor, "layer 101"], layer: int, percentile: float) -> float:
    qs = torch.linspace(0, 100, quantiles.shape[-1])
    return float(np.interp(percentile, qs.numpy(), quantiles[layer].numpy()))


def calibrate_cap(
    space: PersonaSpace,
    layers: Sequence[int],
    *,
    percentile: float = 25.0,
    positions: str = "response",
    k_random: int = 0,
) -> CapSettings:
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
    settings = CapSettings(
        space.model_name, layers, thresholds, units[layers].clone(), float(percentile), positions, space.n_layers
    )
    if k_random:
        stored = 0 if space.control_quantiles is None else int(space.control_quantiles.shape[0])
        if k_random > stored:
            raise ValueError(
                f"the space stores the default's projections along {stored} random directions, "
                f"k_random={k_random} asks for more; use k_random <= {stored} or rebuild the space "
                f"with build_space(cap_controls={k_random})"
            )
        seed = int(space.meta.get("cap_controls", {}).get("seed", 0))
        directions = unit_rows(cap_control_directions(space, stored, seed=seed)[:k_random])
        settings.control_directions = directions[:, layers].clone()
        settings.control_thresholds = [
            [_at_percentile(space.control_quantiles[j], layer, percentile) for layer in layers] for j in range(k_random)
        ]
        settings.control_seed = seed
    return settings


def apply_cap(model: Any, settings: CapSettings, *, engine: Any = None) -> Any:
    """Install the capping of ``settings`` (a removable handle and a context manager): on ``model``, or inside
    ``engine`` (a :class:`~persona_lens.core.vllm_engine.VLLMEngine` started on ``model``; its later calls are
    capped)."""
    n_layers = int(model.cfg.n_layers)
    if settings.n_layers and settings.n_layers != n_layers:
        raise ValueError(
            f"the cap settings are for a model with {settings.n_layers} layers, this one has "
            f"{n_layers}; calibrate on this model"
        )
    positions: Positions = settings.positions  # type: ignore[assignment]
    if engine is not None:
        engine.check_matches(model)
        return engine.cap_each(
            settings.layers, settings.directions, min_values=settings.thresholds, positions=positions
        )
    return install_hooks(
        model,
        [
            (hook_name(layer, n_layers), CapProjection(direction, threshold, None, positions))
            for layer, threshold, direction in zip(settings.layers, settings.thresholds, settings.directions)
        ],
    )


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

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``cap_eval.json`` into ``folder``; the paths written."""
        return [write_json_atomic(Path(folder) / CAP_EVAL_JSON, self.to_json())]

    @classmethod
    def load(cls, folder: str | Path) -> CapEvalResult:
        """The result back from the ``cap_eval.json`` of a folder written by :meth:`save`."""
        data = read_json(Path(folder) / CAP_EVAL_JSON, CAP_EVAL_JSON)
        return cls(list(data["rows"]), dict(data["default"]), dict(data["settings"]), dict(data.get("control", {})))


CAP_EVAL_JSON = "cap_eval.json"


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
    hits = sum(
        round(row[f"in_role_rate_{name}"] * row[f"n_scored_{name}"])
        for row in rows
        if row[f"in_role_rate_{name}"] is not None
    )
    return hits, sum(row[f"n_scored_{name}"] for row in rows)


def _capped(model: Any, capping: CapSettings | None, engine: Any) -> Any:
    """The capping of one condition (none: the uncapped one), on ``model`` or inside ``engine``."""
    return nullcontext() if capping is None else apply_cap(model, capping, engine=engine)


def evaluate_capping(
    model: HookedLM,
    roles: RoleSet,
    settings: CapSettings,
    *,
    judges: Callable[[Role], JudgePair],
    config: SpaceConfig | None = None,
    out_dir: str | Path,
    jailbreaks: bool = True,
    k_random: int | None = None,
    progress: bool = False,
    executor: Executor | None = None,
) -> CapEvalResult:
    """Replies to the eval questions under each judged role's system prompts (and jailbreak prompts), with and
    without capping: the in-role rate of each (share with role score >= threshold; the rest stay in the default
    persona); and the default role's replies with and without capping (exact match, common token prefix).

    The control: the same replies under capping along each of the first ``k_random`` random directions of
    ``settings`` (None: all it holds; :func:`calibrate_cap` with ``k_random``), reported per row
    (``in_role_rate_random``, ``exact_match_rate_random``) and pooled in ``control``: the drop of the pooled
    in-role rate under the axis beside the drops under the random directions, and the default's exact-match rate
    beside theirs.

    Greedy decoding (``temperature=0``) makes "unchanged" an exact statement; the config's temperature is used.

    ``executor``: an :class:`~persona_lens.experiments.executor.EngineExecutor` on a vLLM engine with our hooks
    makes every reply there, capped inside the engine; on an engine without hooks (an OpenAI-compatible URL) only
    the uncapped role replies are made there, the rest here (a capped reply cannot be asked of it).
    """
    engine = getattr(executor, "engine", None)
    steers = bool(getattr(engine, "steers", False))
    config = config or SpaceConfig(temperature=0.0)
    k = settings.n_controls if k_random is None else k_random
    if not 0 <= k <= settings.n_controls:
        raise ValueError(
            f"k_random={k_random}: the cap settings hold {settings.n_controls} random directions; "
            "calibrate more (calibrate_cap k_random, `space cap --controls`) or ask for fewer"
        )
    out = Path(out_dir)
    check_settings(
        out / "settings.json",
        {
            "model": model.cfg.model_name,
            "cap": {
                "layers": settings.layers,
                "thresholds": settings.thresholds,
                "percentile": settings.percentile,
                "positions": settings.positions,
            },
            **config.generation_settings(),
            "n_questions": config.n_questions,
            "n_prompts": config.n_prompts,
            "jailbreaks": jailbreaks,
            "controls": {"thresholds": settings.control_thresholds[:k], "seed": settings.control_seed},
        },
        what="capping evaluation",
    )
    questions = list(roles.questions.eval or roles.questions.build)[: config.n_questions]
    conditions: list[tuple[str, CapSettings | None]] = [("uncapped", None), ("capped", settings)]
    conditions += [(f"random{j}", settings.control(j)) for j in range(k)]
    rows = []
    for role in roles.others:
        judge, coherence = judges(role)
        if judge is None:
            continue
        kinds = [
            (
                "system",
                [
                    (p, make_messages(q, system=s), q)
                    for p, s in enumerate(role.system_prompts[: config.n_prompts])
                    for q in questions
                ],
            )
        ]
        if jailbreaks and role.jailbreaks:
            kinds.append(
                (
                    "jailbreak",
                    [
                        (p, make_messages(t.replace("{question}", q)), q)
                        for p, t in enumerate(role.jailbreaks[: config.n_prompts])
                        for q in questions
                    ],
                )
            )
        for kind, prompts in kinds:
            row: dict[str, Any] = {"role": role.name, "prompts": kind, "n": len(prompts)}
            jobs = [
                ReplyJob(
                    f"{role.name}|{kind}|p{p}|q{i % max(len(questions), 1)}",
                    messages,
                    job_seed(config.seed, f"{role.name}|{kind}|{i}"),
                    {"role": role.name, "kind": kind, "question_text": q},
                )
                for i, (p, messages, q) in enumerate(prompts)
            ]
            for name, capping in conditions:
                desc = f"cap-eval {role.name} {kind} {name}"
                with _capped(model, capping, engine if steers else None):
                    records = generate_replies(
                        model,
                        jobs,
                        config,
                        store=JsonlRecords(out / f"{name}.jsonl"),
                        chunk=config.batch_size,
                        progress=progress,
                        desc=f"{desc}: generate",
                        executor=executor if steers or capping is None else None,
                    )
                # judged once the cap is off: a judge that reads the model (likelihood, offline coherence, local)
                # must read it unhooked
                judge_replies(
                    [records[j.key] for j in jobs], role.rubric, judge, coherence, progress=progress, desc=desc
                )
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
    seeds = [job_seed(config.seed, f"default|{i}") for i in range(len(prompts))]
    for name, capping in conditions:
        with _capped(model, capping, engine if steers else None):
            if steers:  # every default reply from the same place, so "exactly unchanged" compares like with like
                replies[name] = engine.generate(  # type: ignore[union-attr]
                    model, prompts, max_new_tokens=config.max_new_tokens, temperature=config.temperature, seeds=seeds
                )
            else:
                replies[name] = generate(
                    model,
                    prompts,
                    max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature,
                    seeds=seeds,
                    batch_size=config.batch_size,
                )

    def exact(name: str) -> list[bool]:
        return [a == b for a, b in zip(replies["uncapped"].response_ids, replies[name].response_ids)]

    same = exact("capped")
    prefix = [
        _common_prefix(a, b) / max(len(a), 1)
        for a, b in zip(replies["uncapped"].response_ids, replies["capped"].response_ids)
    ]
    changed = [
        {"prompt": p[-1]["content"], "uncapped": a, "capped": b}
        for p, a, b, s in zip(prompts, replies["uncapped"].texts, replies["capped"].texts, same)
        if not s
    ]
    random_exact = [sum(exact(f"random{j}")) / max(len(prompts), 1) for j in range(k)]
    default_row = {
        "role": default.name,
        "n": len(prompts),
        "exact_match_rate": sum(same) / max(len(same), 1),
        "mean_common_prefix": sum(prefix) / max(len(prefix), 1),
        "changed_examples": changed[:3],
        "exact_match_rate_random": random_exact,
    }
    control: dict[str, Any] = {"k_random": k}
    hits, scored = _pooled(rows, "uncapped")
    if rows and scored:
        uncapped = hits / scored
        pooled = {name: _pooled(rows, name) for name, _ in conditions}
        rates = {name: (h / n if n else math.nan) for name, (h, n) in pooled.items()}
        control["pooled"] = {name: {"in_role": h, "scored": n, "rate": rates[name]} for name, (h, n) in pooled.items()}
        control["drop"] = compare(
            "pooled in-role rate drop (uncapped - capped)",
            uncapped - rates["capped"],
            [uncapped - rates[f"random{j}"] for j in range(k)],
        ).to_dict()
    control["default_exact_match"] = compare(
        "default replies exactly unchanged", default_row["exact_match_rate"], random_exact
    ).to_dict()
    result = CapEvalResult(rows, default_row, {**settings.describe(), "config": asdict(config)}, control)
    result.save(out)
    return result
