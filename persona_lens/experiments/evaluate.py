"""Generate replies, judge them, average: the loop shared by every experiment that scores a model's replies
(extraction, the steering sweep, the projection sweep, the trait score of a finetune).

* :class:`GenerationSettings`: how replies are sampled. ``ExtractConfig`` and ``SteeringSweepConfig`` extend it; the
  projection sweep and ``evaluate_trait`` take its fields as keywords.
* :func:`job_seed`: a sampling seed that depends only on a base seed and a job's name, so a resumed run draws the
  same replies as a fresh one.
* :class:`ReplyJob` -> :func:`generate_replies` (what a :class:`~persona_lens.core.io.JsonlRecords` store lacks,
  optionally steered) -> :func:`judge_replies` (the trait rubric and the coherence rubric);
  :func:`evaluate_replies` does both for a list of jobs.
* :func:`average` and :func:`summarise_scores`: None-aware means and rates of judged replies (a None score, a refusal
  or judge failure, is left out, and counted as unscored).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_lens.core import validate
from persona_lens.core.chat import Message
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import Positions, steer
from persona_lens.core.io import JsonlRecords
from persona_lens.experiments.executor import Executor, SerialExecutor
from persona_lens.judges.base import COHERENCE_RUBRIC, Judge, Score

__all__ = [
    "JUDGE_CHUNK",
    "GenerationSettings",
    "job_seed",
    "Steering",
    "ReplyJob",
    "generate_replies",
    "record_problem",
    "judge_replies",
    "evaluate_replies",
    "as_score",
    "average",
    "ScoreSummary",
    "summarise_scores",
    "is_trait_and_coherent",
]

log = logging.getLogger(__name__)

Record = dict[str, Any]

#: Replies judged per judge call by the commands (the bar moves after each: a judge that reads with the model, the
#: offline judge, takes ~0.3 s a reply on 2 idle cores; an interrupted run keeps what a cached judge scored).
JUDGE_CHUNK = 64


@dataclass
class GenerationSettings:
    """How replies are sampled: ``n_samples`` replies per prompt, at most ``max_new_tokens`` tokens each, at
    ``temperature`` (0 = greedy) with nucleus ``top_p``, from ``seed``; ``batch_size`` conversations per forward."""

    n_samples: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        """Refuse bad numbers before any work (:mod:`persona_lens.core.validate`); subclasses' optional fields
        (thresholds, question and pair counts) are checked here too."""
        self.n_samples = validate.positive_int(self.n_samples, "n_samples")
        self.max_new_tokens = validate.positive_int(self.max_new_tokens, "max_new_tokens")
        self.temperature = validate.temperature(self.temperature, "temperature")
        self.top_p = validate.probability(self.top_p, "top_p", allow_zero=False)
        self.seed = validate.non_negative_int(self.seed, "seed")
        self.batch_size = validate.positive_int(self.batch_size, "batch_size")
        for name in ("trait_threshold", "coherence_threshold"):
            if hasattr(self, name):
                setattr(self, name, validate.score_threshold(getattr(self, name), name))
        for name in ("n_questions", "n_pairs"):
            if hasattr(self, name):
                setattr(self, name, validate.optional_positive_int(getattr(self, name), name))

    def generation_settings(self) -> dict[str, Any]:
        """The settings that change what a given reply is (a resumed run must share them). The batch size is one:
        batching changes padding, and with it the floating-point sums behind a reply on most hardware."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }


def job_seed(base: int, name: str) -> int:
    """A sampling seed that depends only on ``base`` and the job's ``name`` (not on its place in a batch or a run)."""
    return (base * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@dataclass(frozen=True, eq=False)
class Steering:
    """Generate under ``steer(model, vector, layer=layer, coef=coef, raw=True, positions=positions)`` (``coef`` in raw
    units)."""

    vector: Any
    """A :class:`~persona_lens.core.vectors.PersonaVector` or a tensor, as :func:`~persona_lens.core.hooks.steer`
    takes it."""
    layer: int
    coef: float
    positions: Positions = "response"


@dataclass
class ReplyJob:
    """One reply to generate: to ``prompt`` (chat messages or prompt token ids), sampled with ``seed``.

    Its record is ``{"key": key, **fields, "response": ...}``; ``fields`` must hold ``question_text``, the question
    the judges see.
    """

    key: str
    prompt: Sequence[Message] | Sequence[int]
    seed: int
    fields: dict[str, Any]
    steering: Steering | None = None

    def __post_init__(self) -> None:
        if "question_text" not in self.fields:
            raise ValueError(f"job {self.key!r}: fields need 'question_text' (the question the judges see)")


def _group(job: ReplyJob) -> tuple[int, int, Any] | None:
    """Jobs of one group share a generate call: unsteered, or steered with one vector at one layer."""
    s = job.steering
    return None if s is None else (id(s.vector), s.layer, s.positions)


def _calls(jobs: Sequence[ReplyJob], chunk: int | None) -> Iterator[list[ReplyJob]]:
    """Consecutive jobs of one group, ``chunk`` at a time (None: the whole run of the group)."""
    start = 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and _group(jobs[end]) == _group(jobs[start]):
            end += 1
        step = chunk or end - start
        for part in range(start, end, step):
            yield list(jobs[part : min(part + step, end)])
        start = end


def _steering(model: HookedLM, jobs: Sequence[ReplyJob]) -> AbstractContextManager[Any]:
    first = jobs[0].steering
    if first is None:
        return nullcontext()
    coefs = torch.tensor([job.steering.coef for job in jobs], dtype=torch.float32)  # type: ignore[union-attr]
    return steer(model, first.vector, layer=first.layer, coef=coefs, raw=True, positions=first.positions)


def _generate_call(model: HookedLM, unit: tuple[list[ReplyJob], GenerationSettings, bool]) -> list[Record]:
    """One generate call (a unit of work for an executor): the records of ``jobs``, in job order."""
    part, settings, with_tokens = unit
    with _steering(model, part):
        out = generate(
            model,
            [job.prompt for job in part],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seeds=[job.seed for job in part],
            batch_size=settings.batch_size,
        )
    return _records(part, out, with_tokens)


def _engine_call(engine: Any, model: HookedLM, unit: tuple[list[ReplyJob], GenerationSettings, bool]) -> list[Record]:
    """The same call on a serving engine: all of it on an engine that steers (vLLM with our hooks), else when it
    needs no hooks (steered calls, and calls while hooks are installed on the model, stay here)."""
    part, settings, with_tokens = unit
    if getattr(engine, "steers", False):  # an engine with our hooks inside (persona_lens.core.vllm_engine)
        out = engine.generate(
            model,
            [job.prompt for job in part],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seeds=[job.seed for job in part],
            steering=[job.steering for job in part],
        )
        return _records(part, out, with_tokens)
    from persona_lens.core.vllm_engine import local_hooks

    if (
        part[0].steering is not None
        or local_hooks(model)  # a cap or steer installed on the model: the engine would not apply it
        or not all(job.prompt and isinstance(job.prompt[0], dict) for job in part)
    ):
        return _generate_call(model, unit)
    out = engine.generate(
        model,
        [job.prompt for job in part],
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seeds=[job.seed for job in part],
    )
    return _records(part, out, with_tokens)


_generate_call.on_engine = _engine_call  # type: ignore[attr-defined]


def _records(part: Sequence[ReplyJob], out: Any, with_tokens: bool) -> list[Record]:
    new = []
    for job, text, ids, stopped in zip(part, out.texts, out.response_ids, out.stopped):
        record = {"key": job.key, **job.fields, "response": text}
        if with_tokens:
            record.update(response_ids=ids, stopped=stopped)
        new.append(record)
    return new


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: Mapping[str, Any], vocab: int | None = None) -> str | None:
    """What is wrong with a reply record read back from a run's records (a field of the wrong type or out of range:
    a file edited by hand), or None. ``vocab``: token ids must be below it. Checked on every read, as the settings
    are, so a float token id or a string score never reaches a vector or a mean."""
    for field in ("response", "question_text"):
        if field in record and not isinstance(record[field], str):
            return f"field {field!r} must be a string, got {type(record[field]).__name__} {record[field]!r:.40}"
    ids = record.get("response_ids")
    if "response_ids" in record:
        if not isinstance(ids, list):
            return f"field 'response_ids' must be a list of token ids, got {type(ids).__name__}"
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int):
                return (
                    f"field 'response_ids' holds {type(token).__name__} {token!r} at position {position}, where "
                    "token ids are integers"
                )
            if token < 0 or (vocab is not None and token >= vocab):
                return (
                    f"field 'response_ids' holds token id {token} at position {position}, outside the "
                    f"vocabulary (0 to {vocab - 1 if vocab else 'its size'})"
                )
    if "stopped" in record and not isinstance(record["stopped"], bool):
        return f"field 'stopped' must be true or false, got {record['stopped']!r:.40}"
    for field in ("trait_score", "coherence"):
        value = record.get(field)
        if value is not None and not (_is_number(value) and 0 <= value <= 100):
            return f"field {field!r} must be a score from 0 to 100 or null, got {value!r:.40}"
    return None


def generate_replies(
    model: HookedLM,
    jobs: Sequence[ReplyJob],
    settings: GenerationSettings,
    *,
    store: JsonlRecords | None = None,
    chunk: int | None = None,
    with_tokens: bool = True,
    progress: bool = False,
    desc: str = "generate",
    executor: Executor | None = None,
) -> dict[str, Record]:
    """Generate the replies of ``jobs`` that ``store`` lacks and append them to it after each generate call.

    Returns every record of the store (file order) and the new ones (job order), by key. One generate call takes the
    consecutive jobs that share a steering (vector, layer, positions), each with its own coefficient, or ``chunk``
    of them at a time. ``with_tokens`` adds ``response_ids`` and ``stopped`` (whether the reply ended with a stop
    token) to each record.

    Each generate call is a unit for ``executor`` (default: this process, in order; a
    :class:`~persona_lens.experiments.executor.RayExecutor` spreads the calls over workers). Every call carries its
    jobs' seeds, so the records are the same wherever it ran; they are appended as calls finish.
    """
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    records = store.load(check=lambda record: record_problem(record, vocab)) if store is not None else {}
    missing = list({job.key: job for job in jobs if job.key not in records}.values())
    if store is not None and len(missing) < len(jobs):
        log.info("resuming: %d of %d replies already generated", len(jobs) - len(missing), len(jobs))
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc=desc, unit="reply", disable=not progress)
    units = ((part, settings, with_tokens) for part in _calls(missing, chunk))
    for _, new in (executor or SerialExecutor()).map(_generate_call, units, model):
        if store is not None:
            store.append(new)
        records.update({r["key"]: r for r in new})
        bar.update(len(new))
    bar.close()
    return records


def _score(
    judge: Judge, rubric: str, items: Sequence[tuple[str, str]], chunk: int | None, progress: bool, desc: str
) -> list[Score]:
    step = chunk or max(len(items), 1)
    scores: list[Score] = []
    bar_off = not progress or chunk is None or not items  # a bar only for judging in chunks
    with tqdm(total=len(items), desc=desc, disable=bar_off, unit="reply") as bar:
        for start in range(0, len(items), step):
            scores.extend(judge.score(rubric, items[start : start + step]))
            bar.update(min(step, len(items) - start))
    if len(scores) != len(items):
        raise RuntimeError(f"judge {judge.judge_id} returned {len(scores)} scores for {len(items)} items")
    return scores


def judge_replies(
    records: Sequence[Record],
    rubric: str,
    judge: Judge,
    coherence_judge: Judge | None,
    *,
    chunk: int | None = None,
    progress: bool = False,
    desc: str = "judge",
) -> None:
    """Set each record's ``trait_score`` (``judge`` with ``rubric``) and ``coherence`` (``coherence_judge`` with the
    coherence rubric; None for all without one), from its ``question_text`` and ``response``.

    Each judge scores all records in one call, or ``chunk`` at a time (:data:`JUDGE_CHUNK` for the commands: a
    progress bar, and an interrupted run keeps the chunks a cached judge has scored).
    """
    # judged grouped by question (a judge that reads with the model shares each question's prompt within a chunk)
    ordered = sorted(records, key=lambda r: r["question_text"])
    items = [(r["question_text"], r["response"]) for r in ordered]
    for name, label, scorer, text in (
        ("trait_score", "trait", judge, rubric),
        ("coherence", "coherence", coherence_judge, COHERENCE_RUBRIC),
    ):
        scores = (
            [None] * len(items) if scorer is None else _score(scorer, text, items, chunk, progress, f"{desc} {label}")
        )
        for record, score in zip(ordered, scores):
            record[name] = score


def evaluate_replies(
    model: HookedLM,
    jobs: Sequence[ReplyJob],
    settings: GenerationSettings,
    rubric: str,
    judge: Judge,
    coherence_judge: Judge | None = None,
    *,
    store: JsonlRecords | None = None,
    chunk: int | None = None,
    judge_chunk: int | None = None,
    with_tokens: bool = True,
    progress: bool = False,
    desc: str = "evaluate",
    executor: Executor | None = None,
) -> dict[str, Record]:
    """:func:`generate_replies` then :func:`judge_replies` on the jobs' records (``judge_chunk`` at a time).

    Returns the records by key as :func:`generate_replies` does; those of ``jobs`` carry ``trait_score`` and
    ``coherence``.
    """
    records = generate_replies(
        model,
        jobs,
        settings,
        store=store,
        chunk=chunk,
        with_tokens=with_tokens,
        progress=progress,
        desc=f"{desc}: generate",
        executor=executor,
    )
    judge_replies(
        list({job.key: records[job.key] for job in jobs}.values()),
        rubric,
        judge,
        coherence_judge,
        chunk=judge_chunk,
        progress=progress,
        desc=f"{desc}: judge",
    )
    return records


def as_score(value: Any) -> float | None:
    """A judge's score as a float (None stays None)."""
    return None if value is None else float(value)


def average(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there is none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _rate(values: Iterable[float | None], threshold: float) -> float | None:
    """The share of the values that are not None that reach ``threshold``; None when there is none."""
    return average([None if v is None else float(v >= threshold) for v in values])


@dataclass
class ScoreSummary:
    """Judged replies in numbers: how many, mean and rate (score >= threshold) of trait and coherence."""

    n: int
    trait_mean: float | None
    trait_rate: float | None
    coherence_mean: float | None
    coherent_rate: float | None
    n_unscored: int
    """Replies without a trait score (refusal or judge failure)."""
    both_rate: float | None = None
    """Share of all replies that express the trait (score >= trait threshold) AND are coherent (coherence >=
    coherence threshold); a reply missing either score counts as not both. None without replies."""


def summarise_scores(
    records: Sequence[Mapping[str, Any]], *, trait_threshold: float = 50.0, coherence_threshold: float = 50.0
) -> ScoreSummary:
    """:class:`ScoreSummary` of records judged by :func:`judge_replies`."""
    traits = [r["trait_score"] for r in records]
    coherence = [r["coherence"] for r in records]
    both = [is_trait_and_coherent(r, trait_threshold, coherence_threshold) for r in records]
    return ScoreSummary(
        n=len(records),
        trait_mean=average(traits),
        trait_rate=_rate(traits, trait_threshold),
        coherence_mean=average(coherence),
        coherent_rate=_rate(coherence, coherence_threshold),
        n_unscored=sum(t is None for t in traits),
        both_rate=sum(both) / len(both) if both else None,
    )


def is_trait_and_coherent(record: Mapping[str, Any], trait_threshold: float, coherence_threshold: float) -> bool:
    """Whether a judged reply expresses the trait and is coherent (a missing score is a no)."""
    trait, coherence = record.get("trait_score"), record.get("coherence")
    return trait is not None and coherence is not None and trait >= trait_threshold and coherence >= coherence_threshold
