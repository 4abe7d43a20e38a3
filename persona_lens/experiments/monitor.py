"""Monitoring: read a persona vector off the residual stream before (and while) the model answers.

* :func:`project_last_prompt`: the paper's monitor. For each prompt, the activation of the **last prompt token**
  (the last token of the assistant header, before any reply token) at one layer, projected on the unit vector of
  each persona vector: ``[n_prompts, k]`` for ``k`` traits at once.
* Sweeps (paper section 4): prompts that push the trait by degrees, replies generated and judged, and how well the
  projection predicts the judged trait. :func:`system_prompt_sweep` uses the trait's 8 graded system prompts (from
  suppressing to eliciting) x the eval questions; :func:`many_shot_sweep` puts 0/5/10/15/20 examples of the trait
  before each question as earlier user/assistant turns. :class:`ProjectionSweepResult` reports per-condition means
  and the correlations of projection with score:

  - ``overall``: Pearson over all prompts;
  - ``within_condition``: the **pooled within-condition** correlation: subtract each condition's mean projection and
    mean score, then one Pearson over all prompts. This is the number we call "within condition" (Table 2 of the
    paper reports one such number per sweep); it asks whether the projection tracks the trait beyond what the
    condition (system prompt, number of shots) explains;
  - ``mean_per_condition``: the mean of the per-condition Pearson correlations, reported alongside.

  The unit of every correlation is the **prompt**: its projection against the mean score of its samples (the
  projection is a property of the prompt, so repeating it once per sample would count it several times).

  Controls (:mod:`persona_lens.core.controls`), in the same run and from the same cached activations (one matmul):
  ``ProjectionSweepResult.baselines[trait][metric]`` (metric ``"overall"`` or ``"within_condition"``) is a
  :class:`~persona_lens.core.controls.Baseline`: the trait's r beside the r of ``controls`` seeded random directions
  of the vector's norm at the layer (percentile, 5-95% band), the other vectors' r (the sweep's other traits and
  the ``against`` vectors: cross-trait) and the sign-flipped vector's r.
* :func:`generate_with_projections`: per-token projections while generating (a record hook on the residual stream),
  for the coloured-text view of :mod:`persona_lens.viz.projections`.

Each result owns its file: :meth:`ProjectionSweepResult.save`/``load`` (``{kind}_sweep.json``) and
:meth:`TokenProjections.save`/``load`` (the ``.json`` beside the page). Why one module over 500 lines: a sweep's
prompts, rows and result are one file format (``load`` must rebuild every field ``to_json`` writes), kept beside
each other; the per-token traces (about 120 lines) are the next cut if it grows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core import stats
from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import Message, collate, encode_generated, encode_prompt, make_messages, token_pieces
from persona_lens.core.controls import (
    DEFAULT_RANDOM_DIRECTIONS,
    Baseline,
    baselines_to_dict,
    compare_measure,
    layer_controls,
    project_rows,
)
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import TokenLayout, record, token_layout
from persona_lens.core.io import write_json_atomic
from persona_lens.core.layers import check_layer
from persona_lens.core.results import read_json
from persona_lens.core.vectors import VectorLike, trait_names, unit_directions, vector_list
from persona_lens.experiments.evaluate import GenerationSettings, ReplyJob, as_score, average, evaluate_replies
from persona_lens.judges.base import Judge

__all__ = [
    "prompt_ids",
    "last_prompt_activations",
    "project_last_prompt",
    "ProjectionPrompt",
    "ProjectionSweepRow",
    "ProjectionSweepResult",
    "system_prompt_prompts",
    "many_shot_prompts",
    "run_projection_sweep",
    "system_prompt_sweep",
    "many_shot_sweep",
    "TokenTrace",
    "TokenProjections",
    "generate_with_projections",
    "sweep_file",
    "DEFAULT_SHOTS",
    "SWEEP_METRICS",
]

DEFAULT_SHOTS = (0, 5, 10, 15, 20)
SWEEP_METRICS = ("overall", "within_condition")
"""The correlations of a sweep that get controls (``ProjectionSweepResult.baselines[trait][metric]``)."""

# ---------------------------------------------------------------------------------------------------------------------
# vectors and projections


def prompt_ids(
    model: HookedLM, conversations: Sequence[Sequence[Message]] | Sequence[Sequence[int]]
) -> list[list[int]]:
    """Prompt token ids (the chat template's generation prompt included) of chat messages; ids pass through."""
    out = []
    for conversation in conversations:
        items = list(conversation)
        out.append(items if items and isinstance(items[0], int) else encode_prompt(model.tokenizer, items))
    return out


def last_prompt_activations(
    model: HookedLM,
    conversations: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> Float[Tensor, "n layer d_model"]:
    """Residual stream at the last prompt token, ``[n, len(layers), d_model]`` float32 (in ``layers`` order)."""
    layers = [check_layer(int(layer), model.cfg.n_layers) for layer in layers]
    encoded = [encode_generated(ids, ()) for ids in prompt_ids(model, conversations)]
    if not encoded:
        return torch.zeros((0, len(layers), model.cfg.d_model))
    acts = collect_activations(
        model,
        encoded,
        reductions=("last_prompt",),
        layers=layers,
        batch_size=batch_size,
        progress=progress,
        desc="last prompt token",
    )
    return acts.get("last_prompt")[:, layers]


def project_last_prompt(
    model: HookedLM,
    conversations: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    *,
    batch_size: int = 8,
    allow_other_model: bool = False,
    progress: bool = False,
) -> Float[Tensor, "n k"]:
    """Projection of the last prompt token's activation at ``layer`` on each vector's unit direction: ``[n, k]``.

    ``conversations``: chat messages (rendered with the template's generation prompt) or prompt token ids.
    """
    units = unit_directions(vectors, layer, model, allow_other_model=allow_other_model)
    acts = last_prompt_activations(model, conversations, [layer], batch_size=batch_size, progress=progress)
    return acts[:, 0] @ units.T


# ---------------------------------------------------------------------------------------------------------------------
# sweeps


@dataclass(frozen=True)
class ProjectionPrompt:
    """One prompt of a sweep: its condition (``level`` orders conditions on a plot), question and messages."""

    condition: str
    level: float
    question: str
    messages: tuple[Message, ...]
    n_messages: int | None = field(default=None, compare=False)
    """The message count when ``messages`` is unknown (a sweep file written before messages were saved)."""

    def message_count(self) -> int:
        return len(self.messages) if self.n_messages is None else self.n_messages


def _questions(trait: Any, questions: Sequence[str] | None, n_questions: int | None) -> list[str]:
    chosen = list(trait.eval_questions if questions is None else questions)
    if n_questions is not None:
        chosen = chosen[:n_questions]
    if not chosen:
        raise ValueError("no question to ask")
    return chosen


def system_prompt_prompts(
    trait: Any, questions: Sequence[str] | None = None, *, n_questions: int | None = None
) -> list[ProjectionPrompt]:
    """The trait's graded system prompts (most suppressing first) x the eval questions (or ``questions``)."""
    graded = list(trait.graded_system_prompts)
    if not graded:
        raise ValueError(f"trait {trait.name!r} has no graded_system_prompts; add 8 to its file for this sweep")
    return [
        ProjectionPrompt(f"system {level}", float(level), question, tuple(make_messages(question, system=system)))
        for level, system in enumerate(graded)
        for question in _questions(trait, questions, n_questions)
    ]


def many_shot_prompts(
    trait: Any,
    shots: Sequence[int] = DEFAULT_SHOTS,
    questions: Sequence[str] | None = None,
    *,
    n_questions: int | None = None,
    system: str | None = None,
) -> list[ProjectionPrompt]:
    """``n`` examples of the trait (user question, assistant answer) before each question, for each ``n`` in shots.

    The examples are the first ``n`` of the trait's ``many_shot_examples``, in file order, so a prompt with more
    shots extends the one with fewer. ``system``: a system prompt for every prompt (None: the template's default).
    """
    examples = list(trait.many_shot_examples)
    if not examples:
        raise ValueError(f"trait {trait.name!r} has no many_shot_examples; add them to its file for this sweep")
    if any(n < 0 for n in shots) or max(shots) > len(examples):
        raise ValueError(
            f"shots must lie in 0..{len(examples)} (the trait has {len(examples)} examples), got {list(shots)}"
        )
    prompts = []
    for n in shots:
        history: list[Message] = []
        for example in examples[:n]:
            history += [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.answer}]
        for question in _questions(trait, questions, n_questions):
            messages = make_messages(question, system=system, history=history)
            prompts.append(ProjectionPrompt(f"{n} shots", float(n), question, tuple(messages)))
    return prompts


@dataclass
class ProjectionSweepRow:
    """One generated reply: which prompt and sample, the prompt's projections, the reply and its score."""

    prompt_index: int
    condition: str
    level: float
    question: str
    sample: int
    projections: dict[str, float]
    response: str
    score: float | None
    stopped: bool
    coherence: float | None = None


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclass
class ProjectionSweepResult:
    """Everything a sweep measured. ``projections[i, j]``: prompt ``i`` on trait ``traits[j]``."""

    kind: str
    traits: list[str]
    layer: int
    judge_id: str
    prompts: list[ProjectionPrompt]
    projections: Float[Tensor, "n_prompts k"]
    rows: list[ProjectionSweepRow]
    settings: dict[str, Any] = field(default_factory=dict)
    random_projections: Float[Tensor, "n_controls n_prompts"] | None = None
    """Projections of every prompt on each random control direction (unit, seeded; see ``controls``)."""
    against: dict[str, list[float]] = field(default_factory=dict)
    """Projections of every prompt on each cross-trait vector given only as a control (``against=``)."""
    controls: dict[str, Any] = field(default_factory=dict)
    """How the random controls were drawn: ``{"k": ..., "seed": ...}``."""
    baselines: dict[str, dict[str, Baseline]] = field(default_factory=dict)
    """``baselines[trait][metric]``, metric in :data:`SWEEP_METRICS`; computed from the fields above when empty."""

    def __post_init__(self) -> None:
        if not self.baselines:
            self.baselines = self.compute_baselines()

    def compute_baselines(self) -> dict[str, dict[str, Baseline]]:
        """Each trait's overall and within-condition r beside its controls: random directions, the other vectors
        (the sweep's other traits and the ``against`` vectors) and the flipped vector."""
        scores = self.prompt_scores()
        conditions = [p.condition for p in self.prompts]
        measures = {
            "overall": lambda x: stats.pearson(x, scores),
            "within_condition": lambda x: stats.within_condition_correlation(x, scores, conditions, "demean"),
        }
        columns = {name: self.projections[:, j] for j, name in enumerate(self.traits)}
        columns.update({name: torch.as_tensor(values, dtype=torch.float32) for name, values in self.against.items()})
        out: dict[str, dict[str, Baseline]] = {}
        for name in self.traits:
            others = {other: data for other, data in columns.items() if other != name}
            out[name] = {
                metric: compare_measure(metric, measure, columns[name], self.random_projections, others=others)
                for metric, measure in measures.items()
            }
        return out

    def baseline(self, metric: str = "overall", trait: str | None = None) -> Baseline:
        """``baselines[trait][metric]`` (default: the first trait's overall r)."""
        if metric not in SWEEP_METRICS:
            raise KeyError(f"no metric {metric!r}; use one of {SWEEP_METRICS}")
        return self.baselines[self.traits[self._trait_index(trait)]][metric]

    def conditions(self) -> list[str]:
        seen: dict[str, None] = {}
        for prompt in self.prompts:
            seen.setdefault(prompt.condition, None)
        return list(seen)

    def prompt_scores(self) -> list[float | None]:
        """Mean score of each prompt's scored samples (None when none was scored)."""
        scores: list[list[float | None]] = [[] for _ in self.prompts]
        for row in self.rows:
            scores[row.prompt_index].append(row.score)
        return [average(s) for s in scores]

    def _trait_index(self, trait: str | None) -> int:
        if trait is None:
            return 0
        if trait not in self.traits:
            raise KeyError(f"no trait {trait!r} in this sweep; it has {self.traits}")
        return self.traits.index(trait)

    def summary(self) -> list[dict[str, Any]]:
        """Per condition, in sweep order: mean score (and its standard error over prompts) and mean projections."""
        scores = self.prompt_scores()
        out = []
        for condition in self.conditions():
            index = [i for i, p in enumerate(self.prompts) if p.condition == condition]
            rows = [r for r in self.rows if r.condition == condition]
            mean, sem, n_scored = stats.mean_sem([scores[i] for i in index])
            out.append(
                {
                    "condition": condition,
                    "level": self.prompts[index[0]].level,
                    "n_prompts": len(index),
                    "n_samples": len(rows),
                    "n_scored_samples": sum(r.score is not None for r in rows),
                    "mean_score": _nan_to_none(mean),
                    "sem_score": _nan_to_none(sem),
                    "mean_coherence": _nan_to_none(stats.mean_sem([r.coherence for r in rows])[0]),
                    "mean_projection": {t: float(self.projections[index, j].mean()) for j, t in enumerate(self.traits)},
                }
            )
        return out

    def correlations(self, trait: str | None = None) -> dict[str, Any]:
        """Correlation of the prompts' projection on ``trait`` (default: the first) with their mean score."""
        j = self._trait_index(trait)
        x = self.projections[:, j].tolist()
        y = self.prompt_scores()
        conditions = [p.condition for p in self.prompts]
        n = sum(1 for v in y if v is not None)
        overall = stats.pearson(x, y)
        return {
            "trait": self.traits[j],
            "n_prompts": n,
            "overall": _nan_to_none(overall),
            "overall_ci95": [_nan_to_none(v) for v in stats.fisher_ci(overall, n)],
            "within_condition": _nan_to_none(stats.within_condition_correlation(x, y, conditions, "demean")),
            "mean_per_condition": _nan_to_none(stats.within_condition_correlation(x, y, conditions, "mean")),
            "per_condition": {
                c: _nan_to_none(r) for c, r in stats.per_condition_correlations(x, y, conditions).items()
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "traits": self.traits,
            "layer": self.layer,
            "judge": self.judge_id,
            "settings": self.settings,
            "conditions": self.summary(),
            "correlations": {t: self.correlations(t) for t in self.traits},
            "controls": {**self.controls, "against": list(self.against)},
            "baselines": baselines_to_dict(self.baselines),
            "prompts": [
                {
                    "condition": p.condition,
                    "level": p.level,
                    "question": p.question,
                    "n_messages": p.message_count(),
                    **({} if p.n_messages is not None else {"messages": [dict(m) for m in p.messages]}),
                    "projection": dict(zip(self.traits, self.projections[i].tolist())),
                    "mean_score": s,
                }
                for i, (p, s) in enumerate(zip(self.prompts, self.prompt_scores()))
            ],
            "rows": [row.__dict__ for row in self.rows],
            "against_projections": self.against,
        }

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``{kind}_sweep.json`` (settings, summary, correlations, controls, every prompt with its messages and
        every judged reply) into ``folder``; the paths written."""
        return [write_json_atomic(Path(folder) / sweep_file(self.kind), self.to_json())]

    @classmethod
    def load(cls, folder: str | os.PathLike[str], kind: str) -> ProjectionSweepResult:
        """The sweep back from the ``{kind}_sweep.json`` of a folder written by :meth:`save`. Files written before
        the prompts' messages were saved load with each prompt's message count only (``messages`` empty), and
        before the cross-trait projections were saved with the saved baselines only."""
        name = sweep_file(kind)
        data = read_json(Path(folder) / name, name)
        traits = list(data["traits"])
        prompts = [
            ProjectionPrompt(
                p["condition"],
                float(p["level"]),
                p["question"],
                tuple(dict(m) for m in p.get("messages", ())),
                None if "messages" in p else int(p["n_messages"]),
            )
            for p in data["prompts"]
        ]
        projections = torch.tensor(
            [[p["projection"][t] for t in traits] for p in data["prompts"]], dtype=torch.float32
        ).reshape(len(prompts), len(traits))
        controls = {k: v for k, v in data.get("controls", {}).items() if k != "against"}
        against = {str(k): list(v) for k, v in data.get("against_projections", {}).items()}
        against.update({str(k): [] for k in data.get("controls", {}).get("against", []) if k not in against})
        baselines = {
            t: {m: Baseline.from_dict(b) for m, b in by_metric.items()}
            for t, by_metric in data.get("baselines", {}).items()
        }
        return cls(
            data["kind"],
            traits,
            int(data["layer"]),
            data["judge"],
            prompts,
            projections,
            [ProjectionSweepRow(**row) for row in data["rows"]],
            dict(data.get("settings", {})),
            against=against,
            controls=controls,
            baselines=baselines,
        )


def sweep_file(kind: str) -> str:
    """The file name of a ``kind`` sweep in its folder: ``{kind}_sweep.json``."""
    return f"{kind}_sweep.json"


def run_projection_sweep(
    model: HookedLM,
    prompts: Sequence[ProjectionPrompt],
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    judge: Judge,
    rubric: str,
    *,
    kind: str = "custom",
    coherence_judge: Judge | None = None,
    allow_other_model: bool = False,
    controls: int = DEFAULT_RANDOM_DIRECTIONS,
    control_seed: int = 0,
    against: Sequence[VectorLike] = (),
    progress: bool = False,
    **generation: Any,
) -> ProjectionSweepResult:
    """Project every prompt's last token, generate ``n_samples`` replies per prompt, judge them against ``rubric``
    (and against the coherence rubric with ``coherence_judge``, when given).

    Controls, from the same activations: ``controls`` seeded random directions (``control_seed``; 0: none) with the
    first vector's norm at ``layer``, and the ``against`` vectors (other traits', as cross-trait controls only);
    see :attr:`ProjectionSweepResult.baselines`.

    ``generation``: fields of :class:`~persona_lens.experiments.evaluate.GenerationSettings` (``n_samples``,
    ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``batch_size``; its defaults otherwise). Sample ``s``
    of prompt ``i`` is drawn with seed ``seed + i * n_samples + s`` (reproducible, batch-independent).
    """
    settings = GenerationSettings(**generation)
    n_samples = settings.n_samples
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("a sweep needs at least one prompt")
    if not isinstance(controls, int) or controls < 0:
        raise ValueError(f"controls must be an int >= 0 (0: no random directions), got {controls!r}")
    names = trait_names(vectors)
    units = unit_directions(vectors, layer, model, allow_other_model=allow_other_model)
    against_units = unit_directions(against, layer, model, allow_other_model=allow_other_model) if against else None
    ids = prompt_ids(model, [p.messages for p in prompts])
    acts = last_prompt_activations(model, ids, [layer], batch_size=settings.batch_size, progress=progress)[:, 0]
    projections = acts @ units.T
    random_projections = None
    if controls:
        random_projections = project_rows(
            acts, layer_controls(vector_list(vectors)[0], layer, controls, seed=control_seed)
        )
    against_projections = {}
    if against_units is not None:
        for name, column in zip(trait_names(against), (acts @ against_units.T).T):
            while name in names or name in against_projections:
                name = f"{name} (against)"
            against_projections[name] = column.tolist()
    samples = [(i, s) for i in range(len(prompts)) for s in range(n_samples)]
    jobs = [
        ReplyJob(f"p{i}|s{s}", ids[i], settings.seed + k, {"question_text": prompts[i].question})
        for k, (i, s) in enumerate(samples)
    ]
    records = evaluate_replies(
        model, jobs, settings, rubric, judge, coherence_judge, progress=progress, desc=f"{kind} sweep"
    )
    rows = []
    for (i, s), job in zip(samples, jobs):
        reply = records[job.key]
        rows.append(
            ProjectionSweepRow(
                i,
                prompts[i].condition,
                prompts[i].level,
                prompts[i].question,
                s,
                dict(zip(names, projections[i].tolist())),
                reply["response"],
                as_score(reply["trait_score"]),
                reply["stopped"],
                as_score(reply["coherence"]),
            )
        )
    settings_json = {"n_samples": n_samples, **settings.generation_settings(), "model": model.cfg.model_name}
    return ProjectionSweepResult(
        kind,
        names,
        layer,
        judge.judge_id,
        prompts,
        projections,
        rows,
        settings_json,
        random_projections,
        against_projections,
        {"k": controls, "seed": control_seed},
    )


def system_prompt_sweep(
    model: HookedLM,
    trait: Any,
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    judge: Judge,
    *,
    questions: Sequence[str] | None = None,
    n_questions: int | None = None,
    **kwargs: Any,
) -> ProjectionSweepResult:
    """The 8 graded system prompts of ``trait`` x its eval questions; see :func:`run_projection_sweep` for the
    options."""
    prompts = system_prompt_prompts(trait, questions, n_questions=n_questions)
    return run_projection_sweep(model, prompts, vectors, layer, judge, trait.rubric, kind="system", **kwargs)


def many_shot_sweep(
    model: HookedLM,
    trait: Any,
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    judge: Judge,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    questions: Sequence[str] | None = None,
    n_questions: int | None = None,
    system: str | None = None,
    **kwargs: Any,
) -> ProjectionSweepResult:
    """0/5/10/15/20 trait examples before each eval question; see :func:`run_projection_sweep` for the options."""
    prompts = many_shot_prompts(trait, shots, questions, n_questions=n_questions, system=system)
    return run_projection_sweep(model, prompts, vectors, layer, judge, trait.rubric, kind="many_shot", **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# per-token projections while generating


@dataclass
class TokenTrace:
    """One conversation's tokens (prompt then reply), their text pieces and their projections ``[k, n_tokens]``."""

    token_ids: list[int]
    pieces: list[str]
    prompt_length: int
    projections: Float[Tensor, "k n_tokens"]
    traits: list[str]
    response: str
    stopped: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "token_ids": self.token_ids,
            "pieces": self.pieces,
            "prompt_length": self.prompt_length,
            "traits": self.traits,
            "response": self.response,
            "stopped": self.stopped,
            "projections": {
                t: [_nan_to_none(v) for v in self.projections[j].tolist()] for j, t in enumerate(self.traits)
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenTrace:
        """The trace back from :meth:`to_json` (a missing projection, saved as null, comes back as NaN)."""
        traits = list(data["traits"])
        rows = [[math.nan if v is None else float(v) for v in data["projections"][t]] for t in traits]
        return cls(
            list(data["token_ids"]),
            list(data["pieces"]),
            int(data["prompt_length"]),
            torch.tensor(rows, dtype=torch.float32).reshape(len(traits), len(data["token_ids"])),
            traits,
            data["response"],
            bool(data["stopped"]),
        )


@dataclass
class TokenProjections:
    """``monitor tokens``: the traces of every prompt on every vector at one layer, and the page they are drawn on.

    Saved as the JSON file beside the page (``page.json`` for ``page.html``); the page itself is a figure, drawn by
    :func:`persona_lens.viz.projections.token_projection_page` from a fresh or loaded result.
    """

    model: str
    layer: int
    traits: list[str]
    traces: list[TokenTrace]
    page: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "traits": self.traits,
            "traces": [t.to_json() for t in self.traces],
            "html": str(self.page),
        }

    def save(self) -> list[Path]:
        """Write the numbers to the ``.json`` beside :attr:`page`; the paths written."""
        return [write_json_atomic(self.page.with_suffix(".json"), self.to_json())]

    @classmethod
    def load(cls, page: str | os.PathLike[str]) -> TokenProjections:
        """The result back from the ``.json`` beside ``page`` (the ``.html`` or the ``.json`` itself)."""
        path = Path(page).with_suffix(".json")
        data = read_json(path, f"{path.name} (the numbers beside the page)")
        return cls(
            data["model"],
            int(data["layer"]),
            list(data["traits"]),
            [TokenTrace.from_json(t) for t in data["traces"]],
            Path(data.get("html") or path.with_suffix(".html")),
        )


def generate_with_projections(
    model: HookedLM,
    conversations: Sequence[Sequence[Message]],
    vectors: VectorLike | Sequence[VectorLike],
    layer: int,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    allow_other_model: bool = False,
) -> list[TokenTrace]:
    """Generate replies while a record hook reads each token's projection on each vector at ``layer``.

    Every prompt token and every reply token gets its projection (the residual stream at that token's position).
    The last token of a reply cut by ``max_new_tokens`` is never fed back to the model, so it is read by one extra
    teacher-forced forward over the finished sequences (only those rows), under the same layout.
    """
    units = unit_directions(vectors, layer, model, allow_other_model=allow_other_model)
    names = trait_names(vectors)
    with ExitStack() as stack:
        recorders = [stack.enter_context(record(model, unit, layer=layer, positions="all")) for unit in units]
        generation = generate(
            model,
            conversations,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            batch_size=batch_size,
        )
        recorded = [recording.projections() for recording in recorders]
    n = len(generation)
    lengths = [len(p) + len(r) for p, r in zip(generation.prompt_ids, generation.response_ids)]
    traces = torch.full((n, len(names), max(lengths, default=0)), float("nan"))
    for j, table in enumerate(recorded):
        width = min(table.shape[1], traces.shape[2])
        traces[: table.shape[0], j, :width] = table[:, :width]
    missing = [i for i in range(n) if bool(traces[i, :, : lengths[i]].isnan().any())]
    if missing:
        _fill_by_forward(model, generation, missing, units, layer, traces)
    out = []
    for i in range(n):
        ids = [*generation.prompt_ids[i], *generation.response_ids[i]]
        out.append(
            TokenTrace(
                ids,
                token_pieces(model.tokenizer, ids),
                len(generation.prompt_ids[i]),
                traces[i, :, : lengths[i]].clone(),
                names,
                generation.texts[i],
                generation.stopped[i],
            )
        )
    return out


@torch.no_grad()
def _fill_by_forward(
    model: HookedLM, generation: Any, rows: list[int], units: Tensor, layer: int, traces: Tensor
) -> None:
    encoded = [encode_generated(generation.prompt_ids[i], generation.response_ids[i]) for i in rows]
    pad_id = model.tokenizer.pad_token_id
    batch = collate(encoded, int(pad_id if pad_id is not None else 0), model.device)
    layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=torch.arange(len(rows)))
    with ExitStack() as stack:
        recorders = [stack.enter_context(record(model, unit, layer=layer, positions="all")) for unit in units]
        stack.enter_context(token_layout(layout))
        model.run_blocks(batch.input_ids, batch.attention_mask, stop_at_layer=layer)
        tables = [recording.projections() for recording in recorders]
    for j, table in enumerate(tables):
        for k, i in enumerate(rows):
            length = len(encoded[k].input_ids)
            gaps = traces[i, j, :length].isnan()
            traces[i, j, :length][gaps] = table[k, :length][gaps]
