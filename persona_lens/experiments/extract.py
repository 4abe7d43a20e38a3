"""Extracting a persona vector from a trait (the paper's section 2), resumable at every step.

1. For each extraction question x positive/negative system prompt pair x sample, generate a reply (batched,
   T=1 by default). Every reply is appended to ``responses.jsonl`` as soon as its batch is done.
2. Judge each reply for the trait and for coherence (judges are wrapped in a SQLite cache: a rerun pays nothing).
3. Keep a (positive, negative) pair when the positive reply scores >= ``trait_threshold``, the negative one
   < ``trait_threshold``, and both have coherence >= ``coherence_threshold``; count why the others were dropped.
4. Collect residual activations of the kept replies at every layer (exact generated tokens, no re-tokenization),
   and take the mean difference positive - negative for response-mean, prompt-mean and last-prompt positions.
5. Save one :class:`~persona_lens.core.vectors.PersonaVector` per position kind and a report with counts and the
   per-layer separation (AUROC) of positive vs negative projections.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_generated, encode_prompt, make_messages
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import JsonlRecords, check_settings
from persona_lens.core.stats import auroc
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.judges.base import COHERENCE_RUBRIC, Judge
from persona_lens.traits.schema import Trait, trait_to_dict

__all__ = ["ExtractConfig", "ExtractionJob", "ExtractionResult", "plan_jobs", "extract", "vector_path"]

log = logging.getLogger(__name__)

POSITIONS = ("response", "prompt", "last_prompt")


@dataclass
class ExtractConfig:
    """Extraction settings; the defaults are the paper's, except ``max_new_tokens`` (1000 there)."""

    n_samples: int = 10
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32
    trait_threshold: float = 50.0
    coherence_threshold: float = 50.0
    n_questions: int | None = None
    """Use only the first ``n_questions`` extraction questions (quick runs)."""
    n_pairs: int | None = None
    """Use only the first ``n_pairs`` system-prompt pairs (quick runs)."""

    def generation_settings(self) -> dict[str, Any]:
        """The settings that change what a given reply is (a resumed run must share them)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


@dataclass(frozen=True)
class ExtractionJob:
    """One reply to generate: a question under one system prompt of one pair, one sample."""

    polarity: str
    pair: int
    question: int
    sample: int
    system: str
    question_text: str

    @property
    def key(self) -> str:
        return f"{self.polarity}|p{self.pair}|q{self.question}|s{self.sample}"

    @property
    def pair_key(self) -> str:
        return f"p{self.pair}|q{self.question}|s{self.sample}"

    @property
    def messages(self) -> list[dict[str, str]]:
        return make_messages(self.question_text, system=self.system)

    def seed(self, base: int) -> int:
        """A sampling seed that depends only on the job, so resumed and fresh runs draw the same replies."""
        return (base * 1_000_003 + zlib.crc32(self.key.encode())) % (2**63)


@dataclass
class ExtractionResult:
    vectors: dict[str, PersonaVector]
    report: dict[str, Any]
    out_dir: Path
    records: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)

    @property
    def vector(self) -> PersonaVector:
        """The response-averaged vector (the paper's persona vector)."""
        return self.vectors["response"]


def plan_jobs(trait: Trait, config: ExtractConfig) -> list[ExtractionJob]:
    questions = trait.extract_questions[: config.n_questions]
    pairs = trait.prompt_pairs[: config.n_pairs]
    jobs = []
    for p, pair in enumerate(pairs):
        for q, question in enumerate(questions):
            for s in range(config.n_samples):
                jobs.append(ExtractionJob("pos", p, q, s, pair.positive, question))
                jobs.append(ExtractionJob("neg", p, q, s, pair.negative, question))
    return jobs


def vector_path(out_dir: str | Path, positions: str = "response") -> Path:
    return Path(out_dir) / f"vector_{positions}.safetensors"


def _generate_missing(model: HookedLM, jobs: Sequence[ExtractionJob], store: JsonlRecords, config: ExtractConfig,
                      progress: bool) -> dict[str, dict[str, Any]]:
    records = store.load()
    missing = [job for job in jobs if job.key not in records]
    if len(missing) < len(jobs):
        log.info("resuming: %d of %d replies already generated", len(jobs) - len(missing), len(jobs))
    chunk = max(config.batch_size, 1)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc="extract: generate", unit="reply",
               disable=not progress)
    for start in range(0, len(missing), chunk):
        part = missing[start : start + chunk]
        out = generate(model, [job.messages for job in part], max_new_tokens=config.max_new_tokens,
                       temperature=config.temperature, top_p=config.top_p,
                       seeds=[job.seed(config.seed) for job in part], batch_size=config.batch_size)
        new = [{"key": job.key, **asdict(job), "response": text, "response_ids": ids, "stopped": stopped}
               for job, text, ids, stopped in zip(part, out.texts, out.response_ids, out.stopped)]
        store.append(new)
        records.update({r["key"]: r for r in new})
        bar.update(len(part))
    bar.close()
    return records


def _judge(records: dict[str, dict[str, Any]], keys: Sequence[str], rubric: str, judge: Judge, desc: str,
           progress: bool) -> dict[str, float | None]:
    items = [(records[k]["question_text"], records[k]["response"]) for k in keys]
    scores: list[float | None] = []
    step = 256
    for start in tqdm(range(0, len(items), step), desc=desc, disable=not progress or not items, unit="batch"):
        scores.extend(judge.score(rubric, items[start : start + step]))
    return dict(zip(keys, scores))


def _drop_reason(pos: dict, neg: dict, config: ExtractConfig) -> str | None:
    for side, record in (("positive", pos), ("negative", neg)):
        if not record["response_ids"]:
            return f"{side} reply empty"
        if record["trait_score"] is None:
            return f"{side} trait score missing (refusal / judge failure)"
        if record["coherence"] is None:
            return f"{side} coherence score missing"
    if pos["trait_score"] < config.trait_threshold:
        return f"positive trait < {config.trait_threshold:g}"
    if neg["trait_score"] >= config.trait_threshold:
        return f"negative trait >= {config.trait_threshold:g}"
    if pos["coherence"] < config.coherence_threshold:
        return f"positive coherence < {config.coherence_threshold:g}"
    if neg["coherence"] < config.coherence_threshold:
        return f"negative coherence < {config.coherence_threshold:g}"
    return None


def extract(
    model: HookedLM,
    trait: Trait,
    *,
    judge: Judge,
    coherence_judge: Judge | None = None,
    config: ExtractConfig | None = None,
    out_dir: str | Path,
    progress: bool = True,
) -> ExtractionResult:
    """Run the whole extraction for ``trait`` on ``model``; writes everything under ``out_dir`` as it goes.

    ``judge`` scores the trait with the trait's rubric; ``coherence_judge`` (default: ``judge``) scores coherence
    with the built-in coherence rubric. Rerunning with the same settings and folder costs nothing; a run that was
    interrupted resumes where it stopped. More samples or questions can be added to an existing folder.
    """
    config = config or ExtractConfig()
    coherence_judge = judge if coherence_judge is None else coherence_judge
    out = Path(out_dir)
    check_settings(out / "settings.json", {
        "model": model.cfg.model_name, "trait": trait_to_dict(trait), **config.generation_settings()},
        what="replies")
    jobs = plan_jobs(trait, config)
    if not jobs:
        raise ValueError("nothing to extract: the trait has no extraction questions or prompt pairs")
    records = _generate_missing(model, jobs, JsonlRecords(out / "responses.jsonl"), config, progress)
    keys = [job.key for job in jobs]
    trait_scores = _judge(records, keys, trait.rubric, judge, "extract: judge trait", progress)
    coherence = _judge(records, keys, COHERENCE_RUBRIC, coherence_judge, "extract: judge coherence", progress)
    for k in keys:
        records[k]["trait_score"], records[k]["coherence"] = trait_scores[k], coherence[k]
    _write_scores(out / "scores.jsonl", [records[k] for k in keys])

    by_pair: dict[str, dict[str, dict]] = {}
    for job in jobs:
        by_pair.setdefault(job.pair_key, {})[job.polarity] = records[job.key]
    dropped: Counter[str] = Counter()
    kept: list[tuple[dict, dict]] = []
    for pair in by_pair.values():
        reason = _drop_reason(pair["pos"], pair["neg"], config)
        if reason is None:
            kept.append((pair["pos"], pair["neg"]))
        else:
            dropped[reason] += 1
    if not kept:
        raise ValueError(
            f"no pair passed the filters ({dict(dropped)}): the model does not express {trait.name!r} under the "
            "positive prompts (or expresses it under the negative ones). Try more samples, other prompts, or "
            "lower --trait-threshold")

    def encoded(record: dict) -> Any:
        job_messages = make_messages(record["question_text"], system=record["system"])
        return encode_generated(encode_prompt(model.tokenizer, job_messages), record["response_ids"])

    pos_acts = collect_activations(model, [encoded(p) for p, _ in kept], batch_size=config.batch_size,
                                   progress=progress, desc="extract: activations +")
    neg_acts = collect_activations(model, [encoded(n) for _, n in kept], batch_size=config.batch_size,
                                   progress=progress, desc="extract: activations -")
    settings = {**asdict(config), "judge": judge.judge_id, "coherence_judge": coherence_judge.judge_id}
    vectors = {}
    for positions in POSITIONS:
        vectors[positions] = PersonaVector.from_activations(
            trait.name, model.cfg.model_name, pos_acts.get(positions), neg_acts.get(positions), positions, settings)
        save_vector(vectors[positions], vector_path(out, positions))

    report = _report(trait, model, config, settings, jobs, records, kept, dropped, vectors["response"],
                     pos_acts.get("response"), neg_acts.get("response"))
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(format_report(report), encoding="utf-8")
    return ExtractionResult(vectors, report, out, records)


def _write_scores(path: Path, records: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps({k: r[k] for k in ("key", "polarity", "pair", "question", "sample",
                                                        "trait_score", "coherence", "response")},
                                    ensure_ascii=False) + "\n")
    tmp.replace(path)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _report(trait: Trait, model: HookedLM, config: ExtractConfig, settings: dict, jobs: Sequence[ExtractionJob],
            records: dict, kept: list, dropped: Counter, vector: PersonaVector, pos: torch.Tensor,
            neg: torch.Tensor) -> dict[str, Any]:
    units = vector.unit()
    pos_proj = torch.einsum("nld,ld->nl", pos, units)
    neg_proj = torch.einsum("nld,ld->nl", neg, units)
    labels = [True] * pos_proj.shape[0] + [False] * neg_proj.shape[0]
    per_layer = [{"layer": layer, "norm": float(vector.vectors[layer].norm()),
                  "auroc": auroc(torch.cat([pos_proj[:, layer], neg_proj[:, layer]]), labels),
                  "mean_projection_positive": float(pos_proj[:, layer].mean()),
                  "mean_projection_negative": float(neg_proj[:, layer].mean())}
                 for layer in range(vector.vectors.shape[0])]
    scores = {pol: [records[j.key]["trait_score"] for j in jobs if j.polarity == pol] for pol in ("pos", "neg")}
    coherence = {pol: [records[j.key]["coherence"] for j in jobs if j.polarity == pol] for pol in ("pos", "neg")}
    n_pairs = len(jobs) // 2
    return {
        "trait": trait.name,
        "model": model.cfg.model_name,
        "settings": settings,
        "generated": {"positive": n_pairs, "negative": n_pairs},
        "pairs": n_pairs,
        "kept": len(kept),
        "dropped": dict(dropped.most_common()),
        "mean_trait_score": {"positive": _mean(scores["pos"]), "negative": _mean(scores["neg"])},
        "trait_rate": {pol_name: _mean([None if s is None else float(s >= config.trait_threshold) for s in v])
                       for pol_name, v in (("positive", scores["pos"]), ("negative", scores["neg"]))},
        "mean_coherence": {"positive": _mean(coherence["pos"]), "negative": _mean(coherence["neg"])},
        "per_layer": per_layer,
        "note": "AUROC is in-sample: the same replies define the vector and are projected onto it.",
    }


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of an extraction report (Markdown)."""
    lines = [f"# Persona vector: {report['trait']} on {report['model']}", "",
             f"- pairs generated: {report['pairs']} (x2 replies); kept: {report['kept']}",
             f"- trait rate (score >= threshold): positive {report['trait_rate']['positive']:.2f}, "
             f"negative {report['trait_rate']['negative']:.2f}"]
    for reason, count in report["dropped"].items():
        lines.append(f"- dropped, {reason}: {count}")
    lines += ["", "| layer | norm | AUROC |", "|---:|---:|---:|"]
    lines += [f"| {row['layer']} | {row['norm']:.3f} | {row['auroc']:.3f} |" for row in report["per_layer"]]
    return "\n".join(lines) + "\n"
