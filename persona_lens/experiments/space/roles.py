"""Role vectors (topic 1 of :mod:`persona_lens.experiments.space`): one resumable unit per role.

Replies to the shared questions under each of the role's system prompts, judged "in role" by the role's judge (through
the one generate -> judge loop), the in-role and coherent ones kept; the role vector is the mean of their
response-mean activations at every layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import EncodedConversation, encode_generated, encode_prompt, make_messages
from persona_lens.core.errors import Error
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import JsonlRecords, check_settings, write_json_atomic
from persona_lens.experiments.evaluate import JUDGE_CHUNK, GenerationSettings, ReplyJob, evaluate_replies, job_seed
from persona_lens.experiments.executor import Executor
from persona_lens.experiments.space.storage import _load_tensors, _save_tensors
from persona_lens.judges.base import Judge
from persona_lens.traits.roles import Role, role_to_dict

__all__ = [
    "JudgePair",
    "RoleNotPlayed",
    "RoleVector",
    "SpaceConfig",
    "build_role_vector",
    "load_role_vector",
    "plan_role_jobs",
]


JudgePair = tuple["Judge | None", "Judge | None"]


class RoleNotPlayed(Error, ValueError):
    """No reply of a role passed the filters: the model does not play it under its prompts."""


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
                fields = {
                    "role": role.name,
                    "prompt": p,
                    "question": q,
                    "sample": s,
                    "system": system,
                    "question_text": question,
                }
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
        return {
            "role": self.role,
            "n_kept": self.n_kept,
            "n_replies": self.n_replies,
            "judged": self.judged,
            "in_role_rate": self.in_role_rate,
            "dropped": self.dropped,
            "kept_keys": self.kept_keys,
        }


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


def build_role_vector(
    model: HookedLM,
    role: Role,
    questions: Sequence[str],
    *,
    judge: Judge | None,
    coherence_judge: Judge | None = None,
    config: SpaceConfig | None = None,
    out_dir: str | Path,
    progress: bool = False,
    executor: Executor | None = None,
) -> RoleVector:
    """Generate, judge and average one role (a resumable unit under ``out_dir/roles/<name>/``).

    Replies go to ``responses.jsonl`` as they are made; the vector to ``vector.safetensors`` once done. Rerunning
    with the same settings costs nothing; other settings in the same folder are refused.
    """
    config = config or SpaceConfig()
    unit = _unit_dir(out_dir, role.name)
    check_settings(
        unit / "settings.json",
        {
            "model": model.cfg.model_name,
            "role": role_to_dict(role),
            "questions": list(questions),
            **config.generation_settings(),
            "n_samples": config.n_samples,
            "n_questions": config.n_questions,
            "n_prompts": config.n_prompts,
            "role_threshold": config.role_threshold,
            "coherence_threshold": config.coherence_threshold,
            "judge": None if judge is None else judge.judge_id,
            "coherence_judge": None if coherence_judge is None else coherence_judge.judge_id,
        },
        what=f"role {role.name}",
    )
    if (unit / "vector.safetensors").exists():
        return load_role_vector(unit)
    jobs = plan_role_jobs(role, questions, config)
    if not jobs:
        raise ValueError(f"role {role.name!r}: nothing to generate (no system prompt or no question)")
    records = evaluate_replies(
        model,
        jobs,
        config,
        role.rubric,
        judge,
        coherence_judge,  # type: ignore[arg-type]
        store=JsonlRecords(unit / "responses.jsonl"),
        chunk=config.batch_size,
        judge_chunk=JUDGE_CHUNK,
        progress=progress,
        desc=f"role {role.name}",
        executor=executor,
    )
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
        raise RoleNotPlayed(
            f"role {role.name!r}: no reply was kept ({dropped}); the model does not play the role "
            "under these prompts. Try more samples, other prompts, or a lower --role-threshold"
        )
    conversations = [_encode_record(model, r) for r in kept]
    engine = getattr(executor, "engine", None)
    if getattr(engine, "steers", False):  # an engine with our hooks reads there too (core/vllm_engine.py)
        acts = engine.collect_activations(conversations, reductions=("response",)).get("response")  # type: ignore[union-attr]
    else:
        acts = collect_activations(
            model,
            conversations,
            reductions=("response",),
            batch_size=config.batch_size,
            progress=progress,
            desc=f"role {role.name}: activations",
        ).get("response")
    vector = RoleVector(
        role.name,
        acts.mean(0),
        len(kept),
        len(jobs),
        judged,
        rate,
        dropped,
        [r["key"] for r in kept],
        acts if role.default else None,
    )
    tensors = {"mean": vector.mean} | ({"activations": acts} if role.default else {})
    _save_tensors(unit / "vector.safetensors", tensors, vector.report() | {"default": role.default}, "role_vector")
    write_json_atomic(unit / "report.json", vector.report())
    return vector


def load_role_vector(unit: str | Path) -> RoleVector:
    """A role vector saved by :func:`build_role_vector` (``unit`` = its folder or its ``vector.safetensors``)."""
    path = Path(unit)
    path = path / "vector.safetensors" if path.is_dir() else path
    tensors, meta = _load_tensors(path, "role_vector")
    return RoleVector(
        meta["role"],
        tensors["mean"],
        meta["n_kept"],
        meta["n_replies"],
        meta["judged"],
        meta["in_role_rate"],
        meta["dropped"],
        meta["kept_keys"],
        tensors.get("activations"),
    )
