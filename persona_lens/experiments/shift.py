"""Finetuning shift (paper section 5): how far finetuning moved the model along a persona vector.

For eval prompts ``x_1..x_n`` (the trait's eval questions, rendered with the generation prompt), ``a_l(x)`` the
residual stream at the **last prompt token** at layer ``l``, and ``u_l`` the unit persona vector:

    shift_l = ( mean_i a_l^finetuned(x_i)  -  mean_i a_l^base(x_i) ) . u_l

which equals the mean over prompts of the per-prompt shift (the projection is linear). Over a set of finetuned
models, the shift along a trait's vector predicts the trait's expression after finetuning: :class:`ShiftStudy`
gives the Pearson correlation of shift with trait score, per vector (a vector of another trait is the cross-trait
baseline), and :func:`persona_lens.viz.projections.shift_figure` draws the scatter.

Controls (:mod:`persona_lens.core.controls`), from the same mean activations (one matmul): each
:class:`ShiftResult` holds the shift along ``controls`` seeded random directions of the first vector's norm at the
layer and along the ``against`` vectors (other traits', cross-trait); ``ShiftResult.baselines[trait]`` is the shift
beside them, and ``ShiftStudy.baselines[trait]["pearson_r"]`` the correlation with the score beside the
correlation of each random direction's (and each other vector's) shift with the same scores, and the flipped r.

Finetuned models given by name are loaded one at a time and released, so a study over many finetunes needs the
memory of two models.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core import stats
from persona_lens.core.chat import Message, make_messages
from persona_lens.core.controls import (
    DEFAULT_RANDOM_DIRECTIONS,
    Baseline,
    baselines_to_dict,
    compare,
    layer_controls,
    project_rows,
)
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import write_json_atomic
from persona_lens.core.layers import check_layer
from persona_lens.core.results import read_json, write_csv
from persona_lens.core.vectors import VectorLike, trait_names, unit_directions, unit_vectors_by_layer, vector_list
from persona_lens.experiments.evaluate import GenerationSettings, ReplyJob, as_score, average, evaluate_replies
from persona_lens.experiments.monitor import last_prompt_activations
from persona_lens.judges.base import Judge

__all__ = [
    "SHIFT_JSON",
    "SHIFT_CSV",
    "mean_last_prompt_activation",
    "shift_from_means",
    "ShiftResult",
    "compute_shift",
    "TraitEvaluation",
    "evaluate_trait",
    "ShiftStudy",
    "shift_study",
]

SHIFT_JSON, SHIFT_CSV = "shift.json", "shift.csv"


def mean_last_prompt_activation(
    model: HookedLM,
    prompts: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> Float[Tensor, "layer d_model"]:
    """Mean over ``prompts`` of the last prompt token's residual stream at every layer, ``[n_layers + 1, d]``."""
    if not prompts:
        raise ValueError("no prompt to average over")
    layers = list(range(model.cfg.n_layers + 1))
    return last_prompt_activations(model, prompts, layers, batch_size=batch_size, progress=progress).mean(0)


def shift_from_means(
    base_mean: Float[Tensor, "layer d_model"],
    finetuned_mean: Float[Tensor, "layer d_model"],
    units: Float[Tensor, "k layer d_model"],
) -> Float[Tensor, "k layer"]:
    """``(finetuned_mean - base_mean) . unit`` at every layer, for each of ``k`` vectors."""
    if base_mean.shape != finetuned_mean.shape:
        raise ValueError(
            f"base and finetuned activations differ in shape: {tuple(base_mean.shape)} vs "
            f"{tuple(finetuned_mean.shape)}; the finetune must keep the base architecture"
        )
    delta = (finetuned_mean.float() - base_mean.float()).cpu()
    return torch.einsum("ld,kld->kl", delta, units)


@dataclass
class ShiftResult:
    """The shift of one finetuned model along each vector: at ``layer`` and at every layer."""

    label: str
    model_name: str
    traits: list[str]
    layer: int
    shift: dict[str, float]
    shift_by_layer: dict[str, list[float]]
    n_prompts: int
    evaluation: TraitEvaluation | None = None
    random_shift: list[float] = field(default_factory=list)
    """The shift at ``layer`` along each random control direction (unit, seeded)."""
    against_shift: dict[str, float] = field(default_factory=dict)
    """The shift at ``layer`` along each cross-trait vector given only as a control."""
    baselines: dict[str, Baseline] = field(default_factory=dict)
    """``baselines[trait]``: the shift along the trait's vector beside its controls (computed when empty)."""

    def __post_init__(self) -> None:
        if not self.baselines:
            self.baselines = {
                name: compare(
                    "shift",
                    value,
                    self.random_shift,
                    others={**{o: v for o, v in self.shift.items() if o != name}, **self.against_shift},
                    flipped=-value,
                )
                for name, value in self.shift.items()
            }

    def to_json(self, with_texts: bool = False) -> dict[str, Any]:
        out = {
            "label": self.label,
            "model": self.model_name,
            "layer": self.layer,
            "shift": self.shift,
            "shift_by_layer": self.shift_by_layer,
            "n_prompts": self.n_prompts,
            "against_shift": self.against_shift,
            "baselines": baselines_to_dict(self.baselines),
        }
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation.to_json(with_texts)
        return out


def compute_shift(
    base: HookedLM | Tensor,
    finetuned: HookedLM,
    prompts: Sequence[Sequence[Message]],
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    *,
    label: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    controls: int = DEFAULT_RANDOM_DIRECTIONS,
    control_seed: int = 0,
    against: Sequence[VectorLike] = (),
) -> ShiftResult:
    """Shift of ``finetuned`` relative to ``base`` (a model, or its precomputed
    :func:`mean_last_prompt_activation`) along each vector. Vectors are checked against ``finetuned`` by shape
    only (a finetune's name differs from its base's). Controls: the shift along ``controls`` seeded random
    directions (0: none) and along the ``against`` vectors, at ``layer``."""
    check_layer(layer, finetuned.cfg.n_layers)
    if not isinstance(controls, int) or controls < 0:
        raise ValueError(f"controls must be an int >= 0 (0: no random directions), got {controls!r}")
    units = unit_vectors_by_layer(vectors, finetuned, allow_other_model=True)
    base_mean = base if isinstance(base, Tensor) else mean_last_prompt_activation(base, prompts, batch_size=batch_size)
    ft_mean = mean_last_prompt_activation(finetuned, prompts, batch_size=batch_size, progress=progress)
    shifts = shift_from_means(base_mean, ft_mean, units)
    names = trait_names(vectors)
    delta = (ft_mean.float() - base_mean.float()).cpu()[layer]
    random_shift = (
        project_rows(delta[None], layer_controls(vector_list(vectors)[0], layer, controls, seed=control_seed))[
            :, 0
        ].tolist()
        if controls
        else []
    )
    against_shift = {}
    if against:
        against_units = unit_directions(against, layer, finetuned, allow_other_model=True)
        for name, value in zip(trait_names(against), (against_units @ delta).tolist()):
            while name in names or name in against_shift:
                name = f"{name} (against)"
            against_shift[name] = float(value)
    return ShiftResult(
        label or finetuned.cfg.model_name,
        finetuned.cfg.model_name,
        names,
        layer,
        {n: float(shifts[j, layer]) for j, n in enumerate(names)},
        {n: shifts[j].tolist() for j, n in enumerate(names)},
        len(prompts),
        random_shift=random_shift,
        against_shift=against_shift,
    )


@dataclass
class TraitEvaluation:
    """Judged replies of one model to the eval questions: mean trait score (and coherence when judged)."""

    mean_score: float | None
    scores: list[float | None]
    mean_coherence: float | None = None
    coherence: list[float | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    judge_id: str = ""

    def to_json(self, with_texts: bool = False) -> dict[str, Any]:
        out = {
            "mean_score": self.mean_score,
            "n_scored": sum(s is not None for s in self.scores),
            "n_replies": len(self.scores),
            "mean_coherence": self.mean_coherence,
            "judge": self.judge_id,
        }
        if with_texts:
            out.update(scores=self.scores, coherence=self.coherence, texts=self.texts)
        return out


def evaluate_trait(
    model: HookedLM,
    questions: Sequence[str],
    rubric: str,
    judge: Judge,
    *,
    coherence_judge: Judge | None = None,
    system: str | None = None,
    **generation: Any,
) -> TraitEvaluation:
    """Generate ``n_samples`` replies per question (no steering) and judge them; the trait score of the model.

    ``generation``: fields of :class:`~persona_lens.experiments.evaluate.GenerationSettings` (its defaults
    otherwise). Reply ``k`` (question ``k // n_samples``) is drawn with seed ``seed + k``.
    """
    settings = GenerationSettings(**generation)
    jobs = [
        ReplyJob(
            f"q{k // settings.n_samples}|s{k % settings.n_samples}",
            make_messages(question, system=system),
            settings.seed + k,
            {"question_text": question},
        )
        for k, question in enumerate(q for q in questions for _ in range(settings.n_samples))
    ]
    records = evaluate_replies(model, jobs, settings, rubric, judge, coherence_judge, with_tokens=False)
    replies = [records[job.key] for job in jobs]
    scores = [as_score(r["trait_score"]) for r in replies]
    coherence = [as_score(r["coherence"]) for r in replies] if coherence_judge is not None else []
    return TraitEvaluation(
        average(scores), scores, average(coherence), coherence, [r["response"] for r in replies], judge.judge_id
    )


@dataclass
class ShiftStudy:
    """Shifts (and trait scores) of several finetuned models; correlations of shift with score per vector."""

    traits: list[str]
    layer: int
    results: list[ShiftResult]
    base_evaluation: TraitEvaluation | None = None
    baselines: dict[str, dict[str, Baseline]] = field(default_factory=dict)
    """``baselines[trait]["pearson_r"]``: r(shift, score) beside the r of each random direction's shift, of each
    other vector's shift (the study's other traits and the ``against`` vectors) and of the flipped vector's."""
    base_model: str = ""
    n_prompts: int = 0
    trait: str | None = None
    """The trait whose score is correlated (its name labels the score axis), when known."""

    def __post_init__(self) -> None:
        if not self.baselines:
            self.baselines = self.compute_baselines()

    def compute_baselines(self) -> dict[str, dict[str, Baseline]]:
        scores = self.scores()
        if not self.results:
            return {}
        n_random = min(len(r.random_shift) for r in self.results)
        random_r = [stats.pearson([r.random_shift[i] for r in self.results], scores) for i in range(n_random)]
        against = {
            name: stats.pearson([r.against_shift.get(name) for r in self.results], scores)
            for name in self.results[0].against_shift
        }
        mine = {name: stats.pearson(self.shifts(name), scores) for name in self.traits}
        return {
            name: {
                "pearson_r": compare(
                    "r(shift, score)",
                    value,
                    random_r,
                    others={**{o: v for o, v in mine.items() if o != name}, **against},
                    flipped=-value if math.isfinite(value) else None,
                )
            }
            for name, value in mine.items()
        }

    def baseline(self, trait: str | None = None, metric: str = "pearson_r") -> Baseline:
        """``baselines[trait][metric]`` (default: the first trait's r)."""
        return self.baselines[trait or self.traits[0]][metric]

    def scores(self) -> list[float | None]:
        return [r.evaluation.mean_score if r.evaluation is not None else None for r in self.results]

    def shifts(self, trait: str | None = None) -> list[float]:
        name = trait or self.traits[0]
        return [r.shift[name] for r in self.results]

    def correlation(self, trait: str | None = None) -> dict[str, Any]:
        """Pearson r of shift along ``trait``'s vector (default: the first) with trait score, and its 95% CI."""
        name = trait or self.traits[0]
        shifts, scores = self.shifts(name), self.scores()
        n = sum(s is not None for s in scores)
        r = stats.pearson(shifts, scores)
        low, high = stats.fisher_ci(r, n)
        clean = [None if math.isnan(v) else v for v in (r, low, high)]
        return {"vector": name, "n_models": n, "pearson_r": clean[0], "ci95": clean[1:]}

    def to_json(self, with_texts: bool = False) -> dict[str, Any]:
        return {
            "traits": self.traits,
            "layer": self.layer,
            "models": [r.to_json(with_texts) for r in self.results],
            "base_evaluation": None if self.base_evaluation is None else self.base_evaluation.to_json(with_texts),
            "correlations": {t: self.correlation(t) for t in self.traits},
            "baselines": baselines_to_dict(self.baselines),
        }

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``shift.json`` (everything, with the judged replies) and ``shift.csv`` (shift per model and vector,
        and the trait score) into ``folder``; the paths written."""
        out = Path(folder)
        data = self.to_json(with_texts=True)
        data.update(base=self.base_model, n_prompts=self.n_prompts, trait=self.trait)
        scores = self.scores()
        rows = [
            [r.label, *(f"{r.shift[t]:.6g}" for t in self.traits), "" if s is None else f"{s:.6g}"]
            for r, s in zip(self.results, scores)
        ]
        return [
            write_json_atomic(out / SHIFT_JSON, data),
            write_csv(out / SHIFT_CSV, ["model", *(f"shift_{t}" for t in self.traits), "trait_score"], rows),
        ]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ShiftStudy:
        """The study back from the ``shift.json`` of a folder written by :meth:`save`."""
        data = read_json(Path(folder) / SHIFT_JSON, "shift.json")
        traits, layer = list(data["traits"]), int(data["layer"])
        results = []
        for model in data["models"]:
            baselines = {t: Baseline.from_dict(b) for t, b in model["baselines"].items()}
            results.append(
                ShiftResult(
                    model["label"],
                    model["model"],
                    traits,
                    int(model["layer"]),
                    dict(model["shift"]),
                    dict(model["shift_by_layer"]),
                    int(model["n_prompts"]),
                    _evaluation_from_json(model.get("evaluation")),
                    random_shift=list(baselines[traits[0]].random) if traits else [],
                    against_shift=dict(model.get("against_shift", {})),
                    baselines=baselines,
                )
            )
        study_baselines = {
            t: {m: Baseline.from_dict(b) for m, b in by_metric.items()}
            for t, by_metric in data.get("baselines", {}).items()
        }
        return cls(
            traits,
            layer,
            results,
            _evaluation_from_json(data.get("base_evaluation")),
            study_baselines,
            base_model=data.get("base") or "",
            n_prompts=int(data.get("n_prompts") or 0),
            trait=data.get("trait"),
        )


def _evaluation_from_json(data: Mapping[str, Any] | None) -> TraitEvaluation | None:
    if data is None:
        return None
    return TraitEvaluation(
        data["mean_score"],
        list(data.get("scores", [])),
        data.get("mean_coherence"),
        list(data.get("coherence", [])),
        list(data.get("texts", [])),
        data.get("judge", ""),
    )


def shift_study(
    base: HookedLM,
    finetuned: Sequence[HookedLM | str],
    prompts: Sequence[Sequence[Message]],
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    *,
    labels: Sequence[str] | None = None,
    scores: Mapping[str, float] | None = None,
    judge: Judge | None = None,
    rubric: str | None = None,
    questions: Sequence[str] | None = None,
    evaluate_base: bool = False,
    load: Callable[[str], HookedLM] | None = None,
    batch_size: int = 8,
    progress: bool = False,
    allow_other_model: bool = False,
    controls: int = DEFAULT_RANDOM_DIRECTIONS,
    control_seed: int = 0,
    against: Sequence[VectorLike] = (),
    **evaluate_kwargs: Any,
) -> ShiftStudy:
    """Shift of each finetuned model (objects, or names loaded one at a time with ``load``), and its trait score:
    from ``scores`` (by label) when given, else judged with ``judge`` and ``rubric`` on ``questions``
    (:func:`evaluate_trait`; ``evaluate_kwargs`` go there). ``evaluate_base`` scores the base model too.
    The vectors are checked against the base model (``allow_other_model`` as in ``check_compatible``).
    Controls: ``controls`` random directions (``control_seed``) and the ``against`` vectors, see
    :attr:`ShiftStudy.baselines`."""
    if not finetuned:
        raise ValueError("no finetuned model given")
    labels = list(labels) if labels is not None else [m if isinstance(m, str) else m.cfg.model_name for m in finetuned]
    if len(labels) != len(finetuned):
        raise ValueError(f"{len(labels)} labels for {len(finetuned)} models")
    if judge is not None and (rubric is None or not questions):
        raise ValueError("judging needs a rubric and questions")
    # The vectors must fit the base model (by name too, unless allow_other_model).
    unit_vectors_by_layer(vectors, base, allow_other_model=allow_other_model)
    if against:
        unit_vectors_by_layer(against, base, allow_other_model=allow_other_model)
    base_mean = mean_last_prompt_activation(base, prompts, batch_size=batch_size, progress=progress)
    base_eval = None
    if evaluate_base and judge is not None:
        base_eval = evaluate_trait(base, questions, rubric, judge, batch_size=batch_size, **evaluate_kwargs)
    if load is None:
        from persona_lens.core.models import load_model

        def load(name: str) -> HookedLM:
            return load_model(name, device=base.device, dtype=base.dtype)

    results = []
    for label, item in zip(labels, finetuned):
        model = load(item) if isinstance(item, str) else item
        try:
            result = compute_shift(
                base_mean,
                model,
                prompts,
                vectors,
                layer,
                label=label,
                batch_size=batch_size,
                progress=progress,
                controls=controls,
                control_seed=control_seed,
                against=against,
            )
            if scores is not None and label in scores:
                result.evaluation = TraitEvaluation(float(scores[label]), [float(scores[label])], judge_id="given")
            elif judge is not None:
                result.evaluation = evaluate_trait(
                    model, questions, rubric, judge, batch_size=batch_size, **evaluate_kwargs
                )
            results.append(result)
        finally:
            if isinstance(item, str):
                del model
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return ShiftStudy(
        trait_names(vectors), layer, results, base_eval, base_model=base.cfg.model_name, n_prompts=len(prompts)
    )
