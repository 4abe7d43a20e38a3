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

:func:`trait_cosines` puts several traits' vectors side by side: their cosine matrix at every layer, beside the
cosines of random directions of the same norm (:mod:`persona_lens.core.controls`): traits whose vectors nearly
coincide cannot be told apart by any analysis that uses them.

Why one module of ~530 lines: the five steps above and the result they save are one resumable run; the cosines
(~100 lines) read the vectors this module writes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_generated, encode_prompt, make_messages
from persona_lens.core.controls import DEFAULT_RANDOM_DIRECTIONS, random_like
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import JsonlRecords, check_settings, write_json_atomic, write_text_atomic
from persona_lens.core.results import ResultFileError, read_json, read_text
from persona_lens.core.stats import auroc
from persona_lens.core.vectors import (
    REDUCTIONS,
    PersonaVector,
    VectorLike,
    check_vector,
    save_vector,
    trait_names,
    vector_list,
)
from persona_lens.experiments.evaluate import (
    JUDGE_CHUNK,
    GenerationSettings,
    ReplyJob,
    evaluate_replies,
    job_seed,
    summarise_scores,
)
from persona_lens.experiments.executor import Executor, executor_settings
from persona_lens.judges.base import Judge
from persona_lens.traits.schema import Trait, trait_to_dict

__all__ = [
    "ExtractConfig",
    "ExtractionJob",
    "ExtractionResult",
    "plan_jobs",
    "extract",
    "vector_path",
    "cosine_matrix",
    "TraitCosines",
    "trait_cosines",
    "format_cosines",
]


@dataclass
class ExtractConfig(GenerationSettings):
    """Extraction settings; the defaults are the paper's, except ``max_new_tokens`` (1000 there)."""

    n_samples: int = 10
    max_new_tokens: int = 256
    batch_size: int = 32
    trait_threshold: float = 50.0
    coherence_threshold: float = 50.0
    n_questions: int | None = None
    """Use only the first ``n_questions`` extraction questions (quick runs)."""
    n_pairs: int | None = None
    """Use only the first ``n_pairs`` system-prompt pairs (quick runs)."""


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
        return job_seed(base, self.key)

    def reply_job(self, base_seed: int) -> ReplyJob:
        return ReplyJob(self.key, self.messages, self.seed(base_seed), asdict(self))


@dataclass
class ExtractionResult:
    """What :func:`extract` made: one vector per reduction, the report, and the judged replies (``records``, by job
    key in job order). The replies are the run's resumable records (``responses.jsonl``, appended by the run as it
    goes); :meth:`save` writes the rest of the folder (``vector_<reduction>.safetensors``, ``scores.jsonl``,
    ``report.json``, ``report.md``) and :meth:`load` reads it all back."""

    vectors: dict[str, PersonaVector]
    report: dict[str, Any]
    out_dir: Path
    records: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)

    @property
    def vector(self) -> PersonaVector:
        """The response-averaged vector (the paper's persona vector)."""
        return self.vectors["response"]

    def save(self, folder: str | Path) -> list[Path]:
        """Write the vectors, ``scores.jsonl`` (one line per judged reply, in job order), ``report.json`` and
        ``report.md`` into ``folder``; the paths written."""
        out = Path(folder)
        written = [save_vector(vector, vector_path(out, positions)) for positions, vector in self.vectors.items()]
        written.append(_write_scores(out / SCORES_FILE, list(self.records.values())))
        return [
            *written,
            write_json_atomic(out / REPORT_JSON, self.report),
            write_text_atomic(out / "report.md", format_report(self.report)),
        ]

    @classmethod
    def load(cls, folder: str | Path) -> ExtractionResult:
        """The result back from a folder written by :func:`extract`: the vectors, the report, and the judged
        replies of ``responses.jsonl`` with their scores from ``scores.jsonl``, in its order (judge fields that
        ``scores.jsonl`` does not keep are not restored)."""
        from persona_lens.core.vectors import VectorFileError, load_vector

        out = Path(folder)
        report = read_json(out / REPORT_JSON, "report.json (written when an extraction finishes)")
        vectors = {}
        for positions in REDUCTIONS:
            try:
                vectors[positions] = load_vector(vector_path(out, positions))
            except (FileNotFoundError, VectorFileError) as error:
                raise ResultFileError(f"{error}; rerun the extraction to write it") from None
        scores = [json.loads(line) for line in read_text(out / SCORES_FILE, SCORES_FILE).splitlines() if line]
        replies = JsonlRecords(out / "responses.jsonl").load() if (out / "responses.jsonl").exists() else {}
        missing = [row["key"] for row in scores if row["key"] not in replies]
        if missing:
            raise ResultFileError(
                f"{out / 'responses.jsonl'} lacks {len(missing)} of the {len(scores)} judged "
                f"replies of scores.jsonl (first: {missing[0]!r}); rerun the extraction"
            )
        return cls(vectors, report, out, {row["key"]: {**replies[row["key"]], **row} for row in scores})


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
    executor: Executor | None = None,
) -> ExtractionResult:
    """Run the whole extraction for ``trait`` on ``model``; writes everything under ``out_dir`` as it goes.

    ``judge`` scores the trait with the trait's rubric; ``coherence_judge`` (default: ``judge``) scores coherence
    with the built-in coherence rubric. Rerunning with the same settings and folder costs nothing; a run that was
    interrupted resumes where it stopped. More samples or questions can be added to an existing folder.
    ``executor`` runs the generate calls elsewhere (:mod:`persona_lens.experiments.executor`, e.g. on Ray workers);
    the vectors are the same.

    Args:
        model: A :class:`~persona_lens.core.hooked_model.HookedLM`.
        trait: The trait (:func:`persona_lens.load_trait`).
        judge: Scores the trait with the trait's rubric.
        coherence_judge: Scores coherence (default: ``judge``).
        config: Replies and filter settings (:class:`ExtractConfig`).
        out_dir: The run's folder (replies, scores, vectors, report).
        progress: Show progress bars.
        executor: Where the generate calls run (default: in this process).

    Returns:
        An :class:`ExtractionResult`: ``vector`` (response-averaged), ``vectors`` by reduction, and ``report``.

    Raises:
        ValueError: No pair passes the filter, or the folder holds a run with other settings.

    Example:
        >>> import tempfile, persona_lens as pl
        >>> from persona_lens.experiments.extract import ExtractConfig, extract
        >>> from persona_lens.judges.rule import RuleJudge
        >>> model = pl.load_model("tiny-llama")
        >>> config = ExtractConfig(n_samples=2, n_questions=3, n_pairs=2, max_new_tokens=6, coherence_threshold=0.0)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     result = extract(model, pl.load_trait("shouting"), judge=RuleJudge("shouting"),
        ...                      coherence_judge=RuleJudge("coherence"), config=config, out_dir=out, progress=False)
        >>> result.report["kept"] > 0, tuple(result.vector.vectors.shape)
        (True, (5, 64))
    """
    config = config or ExtractConfig()
    coherence_judge = judge if coherence_judge is None else coherence_judge
    out = Path(out_dir)
    check_settings(
        out / "settings.json",
        {
            "model": model.cfg.model_name,
            "trait": trait_to_dict(trait),
            **config.generation_settings(),
            **executor_settings(executor),
        },
        what="replies",
    )
    jobs = plan_jobs(trait, config)
    if not jobs:
        raise ValueError("nothing to extract: the trait has no extraction questions or prompt pairs")
    records = evaluate_replies(
        model,
        [job.reply_job(config.seed) for job in jobs],
        config,
        trait.rubric,
        judge,
        coherence_judge,
        store=JsonlRecords(out / "responses.jsonl"),
        chunk=config.batch_size,
        judge_chunk=JUDGE_CHUNK,
        progress=progress,
        desc="extract",
        executor=executor,
    )
    _write_scores(out / SCORES_FILE, [records[job.key] for job in jobs])

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
            "lower --trait-threshold"
        )

    def encoded(record: dict) -> Any:
        job_messages = make_messages(record["question_text"], system=record["system"])
        return encode_generated(encode_prompt(model.tokenizer, job_messages), record["response_ids"])

    engine = getattr(executor, "engine", None)

    def read(conversations: list, desc: str) -> Any:
        if getattr(engine, "steers", False):  # an engine with our hooks reads there too (core/vllm_engine.py)
            return engine.collect_activations(conversations)  # type: ignore[union-attr]
        return collect_activations(model, conversations, batch_size=config.batch_size, progress=progress, desc=desc)

    pos_acts = read([encoded(p) for p, _ in kept], "extract: activations +")
    neg_acts = read([encoded(n) for _, n in kept], "extract: activations -")
    settings = {**asdict(config), "judge": judge.judge_id, "coherence_judge": coherence_judge.judge_id}
    vectors = {}
    for positions in REDUCTIONS:
        vectors[positions] = PersonaVector.from_activations(
            trait.name, model.cfg.model_name, pos_acts.get(positions), neg_acts.get(positions), positions, settings
        )

    report = _report(
        trait,
        model,
        config,
        settings,
        jobs,
        records,
        kept,
        dropped,
        vectors["response"],
        pos_acts.get("response"),
        neg_acts.get("response"),
    )
    result = ExtractionResult(vectors, report, out, {job.key: records[job.key] for job in jobs})
    result.save(out)
    return result


def _write_scores(path: Path, records: Sequence[dict]) -> Path:
    fields = ("key", "polarity", "pair", "question", "sample", "trait_score", "coherence", "response")
    return write_text_atomic(
        path, "".join(json.dumps({k: r[k] for k in fields}, ensure_ascii=False) + "\n" for r in records)
    )


def _report(
    trait: Trait,
    model: HookedLM,
    config: ExtractConfig,
    settings: dict,
    jobs: Sequence[ExtractionJob],
    records: dict,
    kept: list,
    dropped: Counter,
    vector: PersonaVector,
    pos: Float[Tensor, "n layer d_model"],
    neg: Float[Tensor, "n layer d_model"],
) -> dict[str, Any]:
    units = vector.unit()
    pos_proj = torch.einsum("nld,ld->nl", pos, units)
    neg_proj = torch.einsum("nld,ld->nl", neg, units)
    labels = [True] * pos_proj.shape[0] + [False] * neg_proj.shape[0]
    per_layer = [
        {
            "layer": layer,
            "norm": float(vector.vectors[layer].norm()),
            "auroc": auroc(torch.cat([pos_proj[:, layer], neg_proj[:, layer]]), labels),
            "mean_projection_positive": float(pos_proj[:, layer].mean()),
            "mean_projection_negative": float(neg_proj[:, layer].mean()),
        }
        for layer in range(vector.vectors.shape[0])
    ]
    summary = {
        name: summarise_scores(
            [records[j.key] for j in jobs if j.polarity == pol],
            trait_threshold=config.trait_threshold,
            coherence_threshold=config.coherence_threshold,
        )
        for name, pol in (("positive", "pos"), ("negative", "neg"))
    }
    n_pairs = len(jobs) // 2
    return {
        "trait": trait.name,
        "model": model.cfg.model_name,
        "settings": settings,
        "generated": {"positive": n_pairs, "negative": n_pairs},
        "pairs": n_pairs,
        "kept": len(kept),
        "dropped": dict(dropped.most_common()),
        "mean_trait_score": {name: s.trait_mean for name, s in summary.items()},
        "trait_rate": {name: s.trait_rate for name, s in summary.items()},
        "mean_coherence": {name: s.coherence_mean for name, s in summary.items()},
        "per_layer": per_layer,
        "note": "AUROC is in-sample: the same replies define the vector and are projected onto it.",
    }


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary of an extraction report (Markdown)."""
    lines = [
        f"# Persona vector: {report['trait']} on {report['model']}",
        "",
        f"- pairs generated: {report['pairs']} (x2 replies); kept: {report['kept']}",
        f"- trait rate (score >= threshold): positive {report['trait_rate']['positive']:.2f}, "
        f"negative {report['trait_rate']['negative']:.2f}",
    ]
    for reason, count in report["dropped"].items():
        lines.append(f"- dropped, {reason}: {count}")
    lines += ["", "| layer | norm | AUROC |", "|---:|---:|---:|"]
    lines += [f"| {row['layer']} | {row['norm']:.3f} | {row['auroc']:.3f} |" for row in report["per_layer"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# the traits' vectors side by side


def cosine_matrix(vectors: Sequence[VectorLike]) -> Float[Tensor, "layer k k"]:
    """Cosine similarity of every pair of vectors at every layer (nan where a row is zero)."""
    tensors = torch.stack([check_vector(v, full=True).detach().float().cpu() for v in vector_list(vectors)])
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise ValueError("the vectors differ in shape; compare vectors of one model")
    norms = tensors.norm(dim=-1)  # [k, layer]
    dots = torch.einsum("ald,bld->lab", tensors, tensors)
    scale = torch.einsum("al,bl->lab", norms, norms)
    return torch.where(scale > 0, dots / scale.clamp(min=1e-30), torch.full_like(dots, float("nan")))


@dataclass
class TraitCosines:
    """``matrix[l, i, j]``: cosine of trait ``i``'s and trait ``j``'s vectors at layer ``l``; ``random_band[l]``: the
    5th and 95th percentiles of the cosine of the first vector with ``k`` random directions of its norm at layer
    ``l`` (what "unrelated" looks like in this many dimensions)."""

    traits: list[str]
    matrix: Float[Tensor, "layer k k"]
    random_band: list[tuple[float, float]]
    controls: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for i, a in enumerate(self.traits) for b in self.traits[i + 1 :]]

    def to_json(self) -> dict[str, Any]:
        return {
            "traits": self.traits,
            "controls": self.controls,
            "layers": [
                {
                    "layer": layer,
                    "matrix": self.matrix[layer].tolist(),
                    "random_p5": self.random_band[layer][0],
                    "random_p95": self.random_band[layer][1],
                    "pairs": {
                        f"{a} / {b}": float(self.matrix[layer, i, j])
                        for i, a in enumerate(self.traits)
                        for j, b in enumerate(self.traits)
                        if j > i
                    },
                }
                for layer in range(self.matrix.shape[0])
            ],
        }

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``cosines.json`` (everything) and ``cosines.md`` (the table) into ``folder``."""
        out = Path(folder)
        return [
            write_json_atomic(out / COSINES_JSON, self.to_json()),
            write_text_atomic(out / "cosines.md", format_cosines(self)),
        ]

    @classmethod
    def load(cls, folder: str | Path) -> TraitCosines:
        """The cosines back from the ``cosines.json`` of a folder written by :meth:`save`."""
        data = read_json(Path(folder) / COSINES_JSON, COSINES_JSON)
        rows = data["layers"]
        matrix = torch.tensor([row["matrix"] for row in rows], dtype=torch.float64)  # float32 values stay exact
        band = [(float(row["random_p5"]), float(row["random_p95"])) for row in rows]
        return cls(list(data["traits"]), matrix, band, dict(data.get("controls", {})))


COSINES_JSON = "cosines.json"
SCORES_FILE = "scores.jsonl"
REPORT_JSON = "report.json"


def trait_cosines(
    vectors: Sequence[VectorLike], *, controls: int = DEFAULT_RANDOM_DIRECTIONS, control_seed: int = 0
) -> TraitCosines:
    """The cosine matrix of ``vectors`` (two or more) at every layer, beside random directions' cosines."""
    listed = vector_list(vectors)
    if len(listed) < 2:
        raise ValueError("a cosine matrix needs at least two vectors")
    matrix = cosine_matrix(listed)
    first = check_vector(listed[0], full=True).detach().float().cpu()
    band: list[tuple[float, float]] = []
    if controls:
        random = random_like(first, controls, seed=control_seed)  # [k, layer, d]
        dots = torch.einsum("kld,ld->lk", random, first)
        scale = random.norm(dim=-1).T * first.norm(dim=-1)[:, None]
        cos = torch.where(scale > 0, dots / scale.clamp(min=1e-30), torch.full_like(dots, float("nan")))
        for row in cos:
            finite = row[torch.isfinite(row)]
            band.append(
                (float(torch.quantile(finite, 0.05)), float(torch.quantile(finite, 0.95)))
                if finite.numel()
                else (float("nan"), float("nan"))
            )
    else:
        band = [(float("nan"), float("nan"))] * matrix.shape[0]
    return TraitCosines(trait_names(listed), matrix, band, {"k": controls, "seed": control_seed})


def format_cosines(cosines: TraitCosines) -> str:
    """A Markdown table: one row per layer, one column per pair of traits, and the random 5-95% band."""
    pairs = cosines.pairs()
    index = {t: i for i, t in enumerate(cosines.traits)}
    lines = [
        "| layer | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " | random 5-95% |",
        "|---:|" + "---:|" * len(pairs) + "---|",
    ]
    for layer in range(cosines.matrix.shape[0]):
        low, high = cosines.random_band[layer]
        values = " | ".join(f"{float(cosines.matrix[layer, index[a], index[b]]):.3f}" for a, b in pairs)
        lines.append(f"| {layer} | {values} | {low:.3f}..{high:.3f} |")
    return "\n".join(lines) + "\n"
