"""Layer x coefficient steering sweeps and the choice of layer (the paper's section 3).

For each layer, every coefficient runs in one batch (per-conversation coefficients), replies are judged for the
trait and for coherence, and a table plus layer-wise steering curves are written. Coefficients are either raw
(``h_l + a v_l``, the paper's units) or relative to the residual stream's size, ``r = a |v_l| / median|h_l|``, so
curves compare across layers and models; the table records both.

The layer chosen is the one whose best coherent cell (mean coherence >= threshold) has the highest trait score.
Every reply is appended to ``responses.jsonl`` as it is made and every score is cached, so an interrupted sweep
resumes and a rerun costs nothing. Replies share a random stream per (question, sample) across layers and
coefficients (common random numbers), which makes curves smoother for the same number of samples.

``python -m persona_lens.sweep`` (:mod:`persona_lens.cli.sweep`) with no arguments runs the embedded default:
SmolLM2-135M-Instruct, the
rule-measurable ``pirate`` trait, rule judges, CPU; it extracts the vector first if it has none.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from jaxtyping import Float
from torch import Tensor

from persona_lens.core.activations import median_residual_norms
from persona_lens.core.chat import encode_generated, encode_prompt, make_messages
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import JsonlRecords, atomic_output, check_settings, write_json_atomic, write_text_atomic
from persona_lens.core.layers import check_layer
from persona_lens.core.vectors import PersonaVector
from persona_lens.experiments.evaluate import (
    GenerationSettings,
    ReplyJob,
    Steering,
    generate_replies,
    job_seed,
    judge_replies,
    summarise_scores,
)
from persona_lens.experiments.executor import Executor
from persona_lens.judges.base import Judge
from persona_lens.traits.schema import Trait, trait_to_dict

__all__ = ["SteeringSweepConfig", "SteeringCell", "SteeringSweepResult", "run_steering_sweep", "default_layers",
           "choose_layer"]

log = logging.getLogger(__name__)

Condition = Literal["none", "positive", "negative"]


@dataclass
class SteeringSweepConfig(GenerationSettings):
    max_new_tokens: int = 40
    batch_size: int = 64
    layers: list[int] | None = None
    """Layers to steer (our convention: l = output of block l); default: :func:`default_layers`."""
    coefficients: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.7])
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


@dataclass
class SteeringSweepResult:
    cells: list[SteeringCell]
    baseline: SteeringCell
    chosen: SteeringCell | None
    reason: str
    out_dir: Path
    paths: dict[str, Path]
    trait: str = ""
    model_name: str = ""
    config: SteeringSweepConfig | None = None


def default_layers(n_layers: int, count: int = 5) -> list[int]:
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
        return ReplyJob(self.key(cell), self.messages, self.seed(base_seed),
                        {"cell": cell, "question": self.question, "sample": self.sample,
                         "question_text": self.question_text, "system": self.system, "coef_raw": coef_raw},
                        steering)


def _plan(trait: Trait, config: SteeringSweepConfig) -> list[_Job]:
    questions = trait.eval_questions[: config.n_questions]
    prompts: list[str | None]
    if config.condition == "positive":
        prompts = [p.positive for p in trait.prompt_pairs]
    elif config.condition == "negative":
        prompts = [p.negative for p in trait.prompt_pairs]
    else:
        prompts = [None]
    return [_Job(q, s, prompts[(q + s) % len(prompts)], text)
            for q, text in enumerate(questions) for s in range(config.n_samples)]


def _cell_key(layer: int | None, mode: str, coef: float) -> str:
    return "base" if layer is None else f"L{layer}|{mode}{coef:g}"


def choose_layer(cells: Sequence[SteeringCell], baseline: SteeringCell, coherence_threshold: float
                 ) -> tuple[SteeringCell | None, str]:
    """The steered cell with the highest trait score among those with mean coherence >= threshold."""
    coherent = [c for c in cells if c.layer is not None and c.trait_mean is not None
                and c.coherence_mean is not None and c.coherence_mean >= coherence_threshold]
    if not coherent:
        return None, (f"no steered cell keeps mean coherence >= {coherence_threshold:g}; try smaller coefficients "
                      "or other layers")
    best = max(coherent, key=lambda c: (c.trait_mean, -abs(c.coef_relative)))
    base = baseline.trait_mean if baseline.trait_mean is not None else float("nan")
    return best, (f"layer {best.layer} at coefficient {best.coef_relative:g} relative ({best.coef_raw:.3g} raw) "
                  f"gives the highest trait score among coherent cells: {best.trait_mean:.1f} (trait rate "
                  f"{best.trait_rate:.2f}) vs {base:.1f} unsteered, with mean coherence "
                  f"{best.coherence_mean:.1f} >= {coherence_threshold:g}")


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
    """Sweep layers x coefficients; write ``sweep.csv``, ``sweep.json`` and ``scored.jsonl``.

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
    check_settings(out / "settings.json", {"model": model.cfg.model_name, "trait": trait_to_dict(trait),
                                           "vector_norms": [round(float(x), 5) for x in vector.norms()],
                                           **config.generation_settings()}, what="sweep replies")
    jobs = _plan(trait, config)
    if not jobs:
        raise ValueError(f"trait {trait.name!r} has no evaluation questions")
    norms = median_residual_norms(model, [_encoded(model, j) for j in jobs], batch_size=config.batch_size)

    def raw_of(layer: int, coef: float) -> float:
        if config.coefficient_mode == "raw":
            return float(coef)
        return float(coef * norms[layer] / vector.vectors[layer].norm().clamp(min=1e-12))

    def relative_of(layer: int, raw: float) -> float:
        return float(raw * vector.vectors[layer].norm() / norms[layer])

    # The baseline, then every coefficient of a layer in one generate call (one steering, a coefficient per row).
    steered = [(layer, coef, raw_of(layer, coef)) for layer in layers for coef in config.coefficients]
    reply_jobs = [job.reply_job("base", 0.0, None, config.seed) for job in jobs]
    for layer, coef, raw in steered:
        steering = Steering(vector, layer, raw, config.positions)
        cell = _cell_key(layer, config.coefficient_mode, coef)
        reply_jobs += [job.reply_job(cell, raw, steering, config.seed) for job in jobs]
    records = generate_replies(model, reply_jobs, config, store=JsonlRecords(out / "responses.jsonl"),
                               with_tokens=False, progress=progress, desc="sweep: generate", executor=executor)
    judge_replies(list(records.values()), trait.rubric, judge, coherence_judge, progress=progress,
                  desc="sweep: judge")  # every stored reply, those of earlier settings' cells too

    def summarise(layer: int | None, coef_raw: float, coef_relative: float, cell: str) -> SteeringCell:
        summary = summarise_scores([records[job.key(cell)] for job in jobs], trait_threshold=config.trait_threshold,
                                   coherence_threshold=config.coherence_threshold)
        return SteeringCell(layer, coef_raw, coef_relative, **asdict(summary))

    baseline = summarise(None, 0.0, 0.0, "base")
    cells = [summarise(layer, raw, coef if config.coefficient_mode == "relative" else relative_of(layer, raw),
                       _cell_key(layer, config.coefficient_mode, coef)) for layer, coef, raw in steered]
    chosen, reason = choose_layer(cells, baseline, config.coherence_threshold)
    paths = _write_outputs(out, cells, baseline, chosen, reason, config, trait, model, vector, norms, records)
    return SteeringSweepResult(cells, baseline, chosen, reason, out, paths, trait.name, model.cfg.model_name, config)


def _encoded(model: HookedLM, job: _Job) -> Any:
    return encode_generated(encode_prompt(model.tokenizer, job.messages), ())


def _write_outputs(out: Path, cells: list[SteeringCell], baseline: SteeringCell, chosen: SteeringCell | None,
                   reason: str, config: SteeringSweepConfig, trait: Trait, model: HookedLM, vector: PersonaVector,
                   norms: Float[Tensor, " layer"], records: dict[str, dict]) -> dict[str, Path]:
    csv_path = out / "sweep.csv"
    with atomic_output(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SteeringCell.__dataclass_fields__))
        writer.writeheader()
        for cell in [baseline, *cells]:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(cell).items()})
    summary = {"trait": trait.name, "model": model.cfg.model_name, "vector_model": vector.model_name,
               "config": asdict(config), "median_residual_norm": [float(x) for x in norms],
               "baseline": asdict(baseline), "chosen": None if chosen is None else asdict(chosen), "reason": reason,
               "cells": [asdict(c) for c in cells]}
    json_path = write_json_atomic(out / "sweep.json", summary)
    scored = write_text_atomic(out / "scored.jsonl",
                               "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records.values()))
    return {"csv": csv_path, "json": json_path, "scored": scored}
