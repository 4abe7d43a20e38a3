"""Layer x coefficient steering sweeps and the choice of layer (the paper's section 3).

For each layer, every coefficient runs in one batch (per-conversation coefficients), replies are judged for the
trait and for coherence, and a table plus layer-wise steering curves are written. Coefficients are either raw
(``h_l + a v_l``, the paper's units) or relative to the residual stream's size, ``r = a |v_l| / median|h_l|``, so
curves compare across layers and models; the table records both.

The cell chosen is the one with the highest share of replies that are BOTH trait-expressing (trait score >=
``trait_threshold``) and coherent (coherence >= ``coherence_threshold``): a mean coherence can pass while many of a
cell's replies are broken. Beside the table, ``samples.md`` shows the replies of the chosen cell, its neighbours
(adjacent coefficients at its layer, adjacent layers at its coefficient) and the baseline, each marked.
Every reply is appended to ``responses.jsonl`` as it is made and every score is cached, so an interrupted sweep
resumes and a rerun costs nothing. Replies share a random stream per (question, sample) across layers and
coefficients (common random numbers), which makes curves smoother for the same number of samples.

``python -m persona_lens.sweep`` (:mod:`persona_lens.cli.sweep`) with no arguments runs the embedded default:
SmolLM2-135M-Instruct, the rule-measurable ``enthusiastic`` trait, its rule and the offline coherence judge, CPU; it
extracts the vector first if it has none.

Why one module of ~700 lines: the sweep and its controls at the chosen cell (:func:`run_steering_controls`) share
the plan of jobs, the seeds, the judging and the result types; apart, each would import the other's internals.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from persona_lens.core.chat import encode_generated, encode_prompt, make_messages
from persona_lens.core.controls import Baseline, baselines_to_dict, compare, random_like
from persona_lens.core.formatting import format_value
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import check_steering_size
from persona_lens.core.io import JsonlRecords, atomic_output, check_settings, write_json_atomic, write_text_atomic
from persona_lens.core.layers import check_layer
from persona_lens.core.norms import median_residual_norms, raw_coefficient, relative_coefficient
from persona_lens.core.results import read_json, read_text
from persona_lens.core.vectors import PersonaVector, trait_names
from persona_lens.experiments.evaluate import (
    JUDGE_CHUNK,
    GenerationSettings,
    ReplyJob,
    Steering,
    generate_replies,
    is_trait_and_coherent,
    job_seed,
    judge_replies,
    summarise_scores,
)
from persona_lens.experiments.executor import Executor, executor_settings
from persona_lens.judges.base import Judge
from persona_lens.traits.schema import Trait, trait_to_dict

__all__ = [
    "SteeringSweepConfig",
    "SteeringCell",
    "SteeringSweepResult",
    "run_steering_sweep",
    "default_layers",
    "choose_layer",
    "neighbour_cells",
    "format_samples",
    "STEERING_CONTROLS",
    "SteeringControls",
    "run_steering_controls",
]

log = logging.getLogger(__name__)

Condition = Literal["none", "positive", "negative"]


@dataclass
class SteeringSweepConfig(GenerationSettings):
    max_new_tokens: int = 40
    batch_size: int = 64
    layers: list[int] | None = None
    """Layers to steer (our convention: l = output of block l); default: :func:`default_layers`."""
    coefficients: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    coefficient_mode: Literal["relative", "raw"] = "relative"
    n_questions: int | None = None
    positions: Literal["all", "prompt", "response"] = "response"
    condition: Condition = "none"
    """System prompt of the evaluation replies: none, or the trait's positive / negative prompts (cycled)."""
    trait_threshold: float = 50.0
    coherence_threshold: float = 75.0

    def generation_settings(self) -> dict[str, Any]:
        return {**super().generation_settings(), "positions": self.positions, "condition": self.condition}


@dataclass
class SteeringCell:
    """One (layer, coefficient) cell of the sweep; ``layer`` is None for the unsteered baseline."""

    layer: int | None
    coef_raw: float
    coef_relative: float
    n: int
    trait_mean: float | None
    trait_rate: float | None
    coherence_mean: float | None
    coherent_rate: float | None
    n_unscored: int
    both_rate: float | None = None
    """Share of the cell's replies that express the trait AND are coherent (the choice is made on it)."""


@dataclass
class SteeringSweepResult:
    """A sweep's cells and choice; :meth:`save` writes its folder's report files (``sweep.csv``, ``sweep.json``,
    ``scored.jsonl``, ``samples.md``; ``responses.jsonl`` is written reply by reply during the run), :meth:`load`
    reads them back, and the steering curves are drawn from either without the model."""

    cells: list[SteeringCell]
    baseline: SteeringCell
    chosen: SteeringCell | None
    reason: str
    out_dir: Path
    paths: dict[str, Path]
    trait: str = ""
    model_name: str = ""
    config: SteeringSweepConfig | None = None
    vector_model: str = ""
    judges: dict[str, str] = field(default_factory=dict)
    median_residual_norm: list[float] = field(default_factory=list)
    torch_threads: int = 0
    scored: list[dict[str, Any]] = field(default_factory=list)
    """Every stored reply with its scores (``scored.jsonl``)."""
    samples: str = ""
    """The Markdown of the chosen and neighbouring cells' replies (``samples.md``)."""
    prompted: SteeringCell | None = None
    """The anchor: the same questions answered unsteered under the trait's positive system prompts (what the model
    does when it is told to); None when the sweep's replies are already system-prompted or the trait has none."""

    def to_json(self) -> dict[str, Any]:
        """The content of ``sweep.json``."""
        return {
            "trait": self.trait,
            "model": self.model_name,
            "vector_model": self.vector_model,
            "config": asdict(self.config) if self.config is not None else None,
            "judges": self.judges,
            "median_residual_norm": self.median_residual_norm,
            "torch_threads": self.torch_threads,
            "baseline": asdict(self.baseline),
            "prompted": None if self.prompted is None else asdict(self.prompted),
            "chosen": None if self.chosen is None else asdict(self.chosen),
            "reason": self.reason,
            "cells": [asdict(c) for c in self.cells],
        }

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``sweep.csv``, ``sweep.json``, ``scored.jsonl`` and ``samples.md`` into ``folder``; adds them to
        :attr:`paths` and returns them."""
        out = Path(folder)
        csv_path = out / "sweep.csv"
        with atomic_output(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(SteeringCell.__dataclass_fields__))
            writer.writeheader()
            for cell in [self.baseline, *self.cells]:
                writer.writerow({k: ("" if v is None else v) for k, v in asdict(cell).items()})
        written = {
            "csv": csv_path,
            "json": write_json_atomic(out / "sweep.json", self.to_json()),
            "scored": write_text_atomic(
                out / "scored.jsonl", "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.scored)
            ),
            "samples": write_text_atomic(out / "samples.md", self.samples),
        }
        self.paths.update(written)
        return written

    @classmethod
    def load(cls, folder: str | Path) -> SteeringSweepResult:
        """The result back from a folder written by :meth:`save` (``controls.json`` is read by
        :meth:`SteeringControls.load`)."""
        out = Path(folder)
        data = read_json(out / "sweep.json", "sweep.json")
        scored = [json.loads(line) for line in read_text(out / "scored.jsonl", "scored.jsonl").splitlines() if line]
        cells = [SteeringCell(**c) for c in data["cells"]]
        chosen = None if data["chosen"] is None else SteeringCell(**data["chosen"])
        paths = {
            key: out / name
            for key, name in (
                ("csv", "sweep.csv"),
                ("json", "sweep.json"),
                ("scored", "scored.jsonl"),
                ("samples", "samples.md"),
            )
        }
        return cls(
            cells,
            SteeringCell(**data["baseline"]),
            chosen,
            data["reason"],
            out,
            paths,
            data["trait"],
            data["model"],
            None if data["config"] is None else SteeringSweepConfig(**data["config"]),
            data.get("vector_model", ""),
            dict(data.get("judges", {})),
            list(data.get("median_residual_norm", [])),
            int(data.get("torch_threads", 0)),
            scored,
            read_text(out / "samples.md", "samples.md"),
            None if data.get("prompted") is None else SteeringCell(**data["prompted"]),
        )


def default_layers(n_layers: int, count: int = 3) -> list[int]:
    """``count`` layers spread over the middle of the network (persona vectors steer best there)."""
    lo, hi = max(1, round(n_layers * 0.15)), max(1, round(n_layers * 0.8))
    if hi - lo + 1 <= count:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (count - 1)
    return sorted({lo + round(i * step) for i in range(count)})


@dataclass(frozen=True)
class _Job:
    question: int
    sample: int
    system: str | None
    question_text: str

    def key(self, cell: str) -> str:
        return f"{cell}|q{self.question}|s{self.sample}"

    def seed(self, base: int) -> int:
        """The same random stream in every cell (common random numbers)."""
        return job_seed(base, f"q{self.question}|s{self.sample}")

    @property
    def messages(self) -> list[dict[str, str]]:
        return make_messages(self.question_text, system=self.system)

    def reply_job(self, cell: str, coef_raw: float, steering: Steering | None, base_seed: int) -> ReplyJob:
        return ReplyJob(
            self.key(cell),
            self.messages,
            self.seed(base_seed),
            {
                "cell": cell,
                "question": self.question,
                "sample": self.sample,
                "question_text": self.question_text,
                "system": self.system,
                "coef_raw": coef_raw,
            },
            steering,
        )


def _plan(trait: Trait, config: SteeringSweepConfig) -> list[_Job]:
    questions = trait.eval_questions[: config.n_questions]
    prompts: list[str | None]
    if config.condition == "positive":
        prompts = [p.positive for p in trait.prompt_pairs]
    elif config.condition == "negative":
        prompts = [p.negative for p in trait.prompt_pairs]
    else:
        prompts = [None]
    return [
        _Job(q, s, prompts[(q + s) % len(prompts)], text)
        for q, text in enumerate(questions)
        for s in range(config.n_samples)
    ]


def _cell_key(layer: int | None, mode: str, coef: float) -> str:
    return "base" if layer is None else f"L{layer}|{mode}{coef:g}"


def choose_layer(
    cells: Sequence[SteeringCell], baseline: SteeringCell, coherence_threshold: float, trait_threshold: float = 50.0
) -> tuple[SteeringCell | None, str]:
    """The steered cell with the highest share of replies that are both trait-expressing and coherent (ties: the
    higher trait score, then the smaller coefficient); None when no steered reply is both."""
    scored = [c for c in cells if c.layer is not None and c.both_rate is not None]
    if not scored or max(c.both_rate for c in scored) <= 0:
        return None, (
            f"no steered reply has both trait >= {trait_threshold:g} and coherence >= "
            f"{coherence_threshold:g}; try other layers or coefficients"
        )
    best = max(
        scored, key=lambda c: (c.both_rate, c.trait_mean if c.trait_mean is not None else -1.0, -abs(c.coef_relative))
    )
    base_both = baseline.both_rate if baseline.both_rate is not None else float("nan")
    return best, (
        f"layer {best.layer} at coefficient {best.coef_relative:g} relative ({best.coef_raw:.3g} raw) has "
        f"the highest share of replies that are both trait-expressing (>= {trait_threshold:g}) and "
        f"coherent (>= {coherence_threshold:g}): {best.both_rate:.2f} vs {base_both:.2f} unsteered "
        f"(trait rate {best.trait_rate:.2f}, mean trait {best.trait_mean:.1f}, mean coherence "
        f"{best.coherence_mean:.1f}, coherent rate {best.coherent_rate:.2f})"
    )


def neighbour_cells(cells: Sequence[SteeringCell], centre: SteeringCell) -> list[SteeringCell]:
    """``centre``, then the cells next to it: the adjacent coefficients at its layer and the adjacent layers at its
    coefficient (in the sweep's own order)."""
    layers = sorted({c.layer for c in cells if c.layer is not None})
    coefs = sorted({c.coef_relative for c in cells if c.layer == centre.layer})
    out = [centre]
    i = coefs.index(centre.coef_relative)
    out += [
        c
        for c in cells
        if c.layer == centre.layer and c.coef_relative in coefs[max(0, i - 1) : i + 2] and c is not centre
    ]
    j = layers.index(centre.layer)
    near = set(layers[max(0, j - 1) : j + 2]) - {centre.layer}
    out += [c for c in cells if c.layer in near and abs(c.coef_relative - centre.coef_relative) < 1e-9]
    return out


def run_steering_sweep(
    model: HookedLM,
    vector: PersonaVector,
    trait: Trait,
    *,
    judge: Judge,
    coherence_judge: Judge | None = None,
    config: SteeringSweepConfig | None = None,
    out_dir: str | Path,
    progress: bool = True,
    executor: Executor | None = None,
) -> SteeringSweepResult:
    """Sweep layers x coefficients; write ``sweep.csv``, ``sweep.json``, ``scored.jsonl`` and ``samples.md``.

    ``executor`` runs the generate calls (one per layer) elsewhere, e.g. on Ray workers; the results are the same.

    The steering-curve figure is drawn from the result by :func:`persona_lens.viz.steering.plot_steering_curves`
    (the CLI writes it as ``sweep.html``)."""
    config = config or SteeringSweepConfig()
    coherence_judge = judge if coherence_judge is None else coherence_judge
    vector.check_compatible(model, allow_other_model=True)
    if vector.model_name != model.cfg.model_name:
        log.warning("steering %s with a vector extracted from %s", model.cfg.model_name, vector.model_name)
    n_layers = model.cfg.n_layers
    layers = [check_layer(int(x), n_layers) for x in (config.layers or default_layers(n_layers))]
    if 0 in layers:
        raise ValueError("layer 0 is the embedding stream; steer layers 1..n_layers")
    out = Path(out_dir)
    check_settings(
        out / "settings.json",
        {
            "model": model.cfg.model_name,
            "trait": trait_to_dict(trait),
            "vector_norms": [round(float(x), 5) for x in vector.norms()],
            **config.generation_settings(),
            **executor_settings(executor),
        },
        what="sweep replies",
    )
    jobs = _plan(trait, config)
    if not jobs:
        raise ValueError(f"trait {trait.name!r} has no evaluation questions")
    norms = median_residual_norms(model, [_encoded(model, j) for j in jobs])

    def raw_of(layer: int, coef: float) -> float:
        if config.coefficient_mode == "raw":
            return float(coef)
        return float(raw_coefficient(coef, vector.vectors[layer].norm(), norms[layer]))

    def relative_of(layer: int, raw: float) -> float:
        return float(relative_coefficient(raw, vector.vectors[layer].norm(), norms[layer]))

    # The baseline, then every coefficient of a layer in one generate call (one steering, a coefficient per row).
    steered = [(layer, coef, raw_of(layer, coef)) for layer in layers for coef in config.coefficients]
    for layer, _, raw in steered:  # before any reply: a cell past the bound would be uniform noise, scored
        check_steering_size(raw, vector.vectors[layer])
    reply_jobs = [job.reply_job("base", 0.0, None, config.seed) for job in jobs]
    anchors = _prompted_jobs(trait, config, jobs)
    reply_jobs += [job.reply_job("prompted", 0.0, None, config.seed) for job in anchors]
    for layer, coef, raw in steered:
        steering = Steering(vector, layer, raw, config.positions)
        cell = _cell_key(layer, config.coefficient_mode, coef)
        reply_jobs += [job.reply_job(cell, raw, steering, config.seed) for job in jobs]
    records = generate_replies(
        model,
        reply_jobs,
        config,
        store=JsonlRecords(out / "responses.jsonl"),
        with_tokens=False,
        progress=progress,
        desc="sweep: generate",
        executor=executor,
    )
    judge_replies(
        list(records.values()),
        trait.rubric,
        judge,
        coherence_judge,
        chunk=JUDGE_CHUNK,
        progress=progress,
        desc="sweep: judge",
    )  # every stored reply, those of earlier settings' cells too

    def summarise(layer: int | None, coef_raw: float, coef_relative: float, cell: str) -> SteeringCell:
        summary = summarise_scores(
            [records[job.key(cell)] for job in jobs],
            trait_threshold=config.trait_threshold,
            coherence_threshold=config.coherence_threshold,
        )
        return SteeringCell(layer, coef_raw, coef_relative, **asdict(summary))

    baseline = summarise(None, 0.0, 0.0, "base")
    prompted = None
    if anchors:
        summary = summarise_scores(
            [records[job.key("prompted")] for job in anchors],
            trait_threshold=config.trait_threshold,
            coherence_threshold=config.coherence_threshold,
        )
        prompted = SteeringCell(None, 0.0, 0.0, **asdict(summary))
    cells = [
        summarise(
            layer,
            raw,
            coef if config.coefficient_mode == "relative" else relative_of(layer, raw),
            _cell_key(layer, config.coefficient_mode, coef),
        )
        for layer, coef, raw in steered
    ]
    chosen, reason = choose_layer(cells, baseline, config.coherence_threshold, config.trait_threshold)
    cell_keys = {
        id(cell): _cell_key(layer, config.coefficient_mode, coef) for cell, (layer, coef, _) in zip(cells, steered)
    }
    centre = chosen or max(cells, key=lambda c: (c.trait_rate or 0.0, -abs(c.coef_relative)), default=None)
    shown = [] if centre is None else neighbour_cells(cells, centre)
    samples = [
        (
            cell,
            "chosen" if cell is chosen else "neighbour" if cell is not centre else "most trait (none chosen)",
            [records[job.key(cell_keys[id(cell)])] for job in jobs],
        )
        for cell in shown
    ]
    if prompted is not None:
        samples.append(
            (prompted, "system-prompted, unsteered: the anchor", [records[job.key("prompted")] for job in anchors])
        )
    samples.append((baseline, "unsteered", [records[job.key("base")] for job in jobs]))
    result = SteeringSweepResult(
        cells,
        baseline,
        chosen,
        reason,
        out,
        {},
        trait.name,
        model.cfg.model_name,
        config,
        vector.model_name,
        {"trait": judge.judge_id, "coherence": coherence_judge.judge_id},
        [float(x) for x in norms],
        torch.get_num_threads(),
        list(records.values()),
        format_samples(samples, trait, config),
        prompted,
    )
    result.save(out)
    return result


def _prompted_jobs(trait: Trait, config: SteeringSweepConfig, jobs: Sequence[_Job]) -> list[_Job]:
    """The sweep's questions and samples under the trait's positive system prompts (cycled as for
    ``condition="positive"``): the anchor cell. None when the sweep is already prompted or there is no prompt."""
    if config.condition != "none" or not trait.prompt_pairs:
        return []
    prompts = [p.positive for p in trait.prompt_pairs]
    return [_Job(j.question, j.sample, prompts[(j.question + j.sample) % len(prompts)], j.question_text) for j in jobs]


def format_samples(
    samples: Sequence[tuple[SteeringCell, str, Sequence[dict]]], trait: Trait, config: SteeringSweepConfig
) -> str:
    """Markdown: for each (cell, role, records), the cell's figures and every reply verbatim with its scores; a
    reply that is both trait-expressing and coherent is marked **both**."""
    lines = [
        f"# Replies of the chosen and neighbouring cells: trait {trait.name!r}",
        "",
        f"A reply counts as **both** when its trait score is >= {config.trait_threshold:g} and its coherence "
        f">= {config.coherence_threshold:g}.",
        "",
    ]
    for cell, role, records in samples:
        unsteered = "system-prompted" if role.startswith("system") else "unsteered"
        where = (
            unsteered
            if cell.layer is None
            else (f"layer {cell.layer}, coefficient {cell.coef_relative:g} relative ({cell.coef_raw:.3g} raw)")
        )
        both = "n/a" if cell.both_rate is None else f"{cell.both_rate:.2f}"
        lines += [
            f"## {where} ({role})",
            "",
            f"both {both}, trait rate {_fmt(cell.trait_rate)}, mean coherence {_fmt(cell.coherence_mean, 1)}, "
            f"coherent rate {_fmt(cell.coherent_rate)}; {cell.n} replies",
            "",
        ]
        for record in records:
            good = is_trait_and_coherent(record, config.trait_threshold, config.coherence_threshold)
            lines.append(
                f"- {'**both** ' if good else ''}[trait {_fmt(record['trait_score'], 0)}, coherence "
                f"{_fmt(record['coherence'], 0)}] *{record['question_text']}* -> "
                f"{json.dumps(record['response'], ensure_ascii=False)}"
            )
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str:
    return format_value(value, f".{digits}f")


def _encoded(model: HookedLM, job: _Job) -> Any:
    return encode_generated(encode_prompt(model.tokenizer, job.messages), ())


# ---------------------------------------------------------------------------------------------------------------------
# controls: the same steering with random vectors of the vector's norm, the flipped vector and other traits' vectors

STEERING_CONTROLS = 3
"""Random vectors steered at the chosen cell by default: each costs one cell of generation (the questions x samples
of the sweep), so 3 random + the vector + the flipped vector add 5 cells to a sweep of (layers x coefficients)."""


@dataclass
class SteeringControls:
    """One steered cell beside its controls, generated and judged on the same questions with the same seeds:
    ``baselines[metric]`` for ``trait_rate`` (share of replies >= trait threshold), ``trait_mean`` and
    ``coherent_trait_rate`` (share of replies both >= trait threshold and >= coherence threshold)."""

    layer: int
    coef_raw: float
    coef_relative: float
    cells: dict[str, dict[str, Any]]
    """Per steered vector (``vector``, ``random0``.., ``flipped``, other traits): its raw coefficient and summary."""
    baselines: dict[str, Baseline]
    controls: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "coef_raw": self.coef_raw,
            "coef_relative": self.coef_relative,
            "controls": self.controls,
            "cells": self.cells,
            "baselines": baselines_to_dict(self.baselines),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``controls.json`` into ``folder`` (the replies are in ``controls.jsonl``, written during the run)."""
        self.paths["json"] = write_json_atomic(Path(folder) / "controls.json", self.to_json())
        self.paths["replies"] = Path(folder) / "controls.jsonl"
        return self.paths["json"]

    @classmethod
    def load(cls, folder: str | Path) -> SteeringControls:
        """The controls back from the ``controls.json`` of a sweep folder."""
        data = read_json(Path(folder) / "controls.json", "controls.json")
        return cls(
            int(data["layer"]),
            float(data["coef_raw"]),
            float(data["coef_relative"]),
            dict(data["cells"]),
            {m: Baseline.from_dict(b) for m, b in data["baselines"].items()},
            dict(data["controls"]),
            {"json": Path(folder) / "controls.json", "replies": Path(folder) / "controls.jsonl"},
        )


def _coherent_trait_rate(records: Sequence[dict], trait_threshold: float, coherence_threshold: float) -> float | None:
    pairs = [(r["trait_score"], r["coherence"]) for r in records]
    scored = [(t, c) for t, c in pairs if t is not None and c is not None]
    if not scored:
        return None
    return sum(t >= trait_threshold and c >= coherence_threshold for t, c in scored) / len(scored)


def run_steering_controls(
    model: HookedLM,
    vector: PersonaVector,
    trait: Trait,
    cell: SteeringCell,
    *,
    judge: Judge,
    coherence_judge: Judge | None = None,
    config: SteeringSweepConfig | None = None,
    out_dir: str | Path,
    controls: int = STEERING_CONTROLS,
    control_seed: int = 0,
    against: Sequence[PersonaVector] = (),
    flip: bool = True,
    progress: bool = True,
    executor: Executor | None = None,
) -> SteeringControls:
    """Steer at ``cell``'s layer with the vector, ``controls`` seeded random vectors with its per-layer norm (same
    raw coefficient, so the same relative coefficient), the flipped vector and each ``against`` vector (at the same
    relative coefficient: its raw coefficient scaled by the norms), on the sweep's questions and seeds; judge and
    compare. Replies go to ``out_dir/controls.jsonl`` (resumable) and the result to ``out_dir/controls.json``.
    ``executor`` runs the generate calls, as in :func:`run_steering_sweep`."""
    config = config or SteeringSweepConfig()
    coherence_judge = judge if coherence_judge is None else coherence_judge
    if cell.layer is None:
        raise ValueError("controls need a steered cell (the unsteered baseline has no vector)")
    if not isinstance(controls, int) or controls < 0:
        raise ValueError(f"controls must be an int >= 0 (0: no random vectors), got {controls!r}")
    layer = int(cell.layer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = _plan(trait, config)
    norm = float(vector.vectors[layer].norm())
    if cell.coef_relative:
        residual = cell.coef_raw * norm / cell.coef_relative  # the layer's median residual norm
    else:
        residual = float("nan")
    steered: dict[str, tuple[Any, float]] = {"vector": (vector, cell.coef_raw)}
    for i, tensor in enumerate(random_like(vector.vectors, controls, seed=control_seed) if controls else []):
        steered[f"random{i}"] = (PersonaVector(f"random{i}", vector.model_name, tensor), cell.coef_raw)
    if flip:
        steered["flipped"] = (vector, -cell.coef_raw)
    for other, name in zip(against, trait_names(list(against)) if against else []):
        other_norm = float(other.vectors[layer].norm())
        if not other_norm or residual != residual:
            raise ValueError(f"cannot steer {name!r} at the same relative coefficient (zero norm or coefficient 0)")
        while name in steered:
            name = f"{name} (against)"
        steered[name] = (other, cell.coef_relative * residual / other_norm)
    tag = f"control|L{layer}|raw{cell.coef_raw:.6g}|seed{control_seed}"
    reply_jobs = []
    for name, (vec, raw) in steered.items():
        steering = Steering(vec, layer, raw, config.positions)
        reply_jobs += [job.reply_job(f"{tag}|{name}", raw, steering, config.seed) for job in jobs]
    records = generate_replies(
        model,
        reply_jobs,
        config,
        store=JsonlRecords(out / "controls.jsonl"),
        with_tokens=False,
        progress=progress,
        desc="controls: generate",
        executor=executor,
    )
    judge_replies(
        [records[j.key] for j in reply_jobs],
        trait.rubric,
        judge,
        coherence_judge,
        chunk=JUDGE_CHUNK,
        progress=progress,
        desc="controls: judge",
    )
    cells: dict[str, dict[str, Any]] = {}
    for name, (_, raw) in steered.items():
        mine = [records[job.key(f"{tag}|{name}")] for job in jobs]
        summary = summarise_scores(
            mine, trait_threshold=config.trait_threshold, coherence_threshold=config.coherence_threshold
        )
        cells[name] = {
            "coef_raw": raw,
            **asdict(summary),
            "coherent_trait_rate": _coherent_trait_rate(mine, config.trait_threshold, config.coherence_threshold),
        }
    randoms = [name for name in steered if name.startswith("random") and name[6:].isdigit()]
    others = [name for name in steered if name not in ("vector", "flipped", *randoms)]
    baselines = {
        metric: compare(
            metric,
            cells["vector"][metric],
            [cells[n][metric] for n in randoms],
            others={n: cells[n][metric] for n in others},
            flipped=cells["flipped"][metric] if flip else None,
        )
        for metric in ("trait_rate", "trait_mean", "coherent_trait_rate")
    }
    result = SteeringControls(
        layer,
        cell.coef_raw,
        cell.coef_relative,
        cells,
        baselines,
        {"k": controls, "seed": control_seed, "against": others, "flipped": flip},
    )
    result.save(out)
    return result
