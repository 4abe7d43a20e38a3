"""Choosing judges by name, as the CLI does: ``rule``, ``claude``, ``local`` or ``auto``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persona_lens.judges.base import Judge

__all__ = [
    "JUDGE_KINDS",
    "COHERENCE_KINDS",
    "DEFAULT_COHERENCE",
    "build_judges",
    "build_offline_coherence",
    "build_likelihood_coherence",
    "resolve_judge_kind",
]

JUDGE_KINDS = ("auto", "rule", "claude", "local")
COHERENCE_KINDS = ("offline", "judge", "auto", "likelihood", "rule")
#: What every command judges coherence with unless told otherwise (measured against readers: docs/guides/judges.md).
DEFAULT_COHERENCE = "offline"


def build_likelihood_coherence(
    model: Any, trait: Any, calibration: str | Path | None = None, *, progress: bool = False
) -> Judge:
    """:class:`~persona_lens.judges.likelihood.LikelihoodCoherenceJudge` for ``trait`` on ``model``: read in the
    template's default context and under the trait's first positive system prompt, calibrated on the model's own
    unsteered replies to the trait's extraction and evaluation questions (loaded from / saved to ``calibration``)."""
    from persona_lens.judges.likelihood import LikelihoodCoherenceJudge, calibration_for

    if model is None:
        raise ValueError(
            "the likelihood coherence judge needs the model (it reads the unsteered model's "
            "likelihoods); pass model=, or use --coherence rule"
        )
    contexts = (None, trait.prompt_pairs[0].positive) if trait.prompt_pairs else (None,)
    questions = list(dict.fromkeys([*trait.extract_questions, *trait.eval_questions]))
    return LikelihoodCoherenceJudge(model, calibration_for(model, questions, contexts, calibration, progress=progress))


def build_offline_coherence(model: Any, trait: Any) -> Judge:
    """:class:`~persona_lens.judges.offline.OfflineCoherenceJudge` for ``trait``: replies read in the template's
    default context and under the trait's first positive system prompt. Needs no calibration; a model without its
    own fit (or ``model=None``) gets the model-free fit on the rule features."""
    from persona_lens.judges.offline import OfflineCoherenceJudge

    contexts = (None, trait.prompt_pairs[0].positive) if getattr(trait, "prompt_pairs", None) else (None,)
    return OfflineCoherenceJudge(model, contexts)


def resolve_judge_kind(kind: str, trait: Any) -> str:
    """``kind`` with ``auto`` resolved, after checking it can score ``trait`` here (a rule to apply, an API key);
    needs no model, so the CLI checks it before loading one."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge {kind!r}; choose one of {', '.join(JUDGE_KINDS)}")
    if kind == "auto":
        kind = "rule" if trait.rule else "claude"
    if kind == "rule" and not trait.rule:
        raise ValueError(
            f'trait {trait.name!r} has no rule; use --judge claude (or local), or add a "rule" to its JSON file'
        )
    if kind == "claude" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise ValueError(
            "--judge claude needs an API key: export ANTHROPIC_API_KEY=sk-ant-... "
            "(or use --judge rule for a rule-measurable trait, or --judge local)"
        )
    return kind


def build_judges(
    kind: str,
    trait: Any,
    *,
    cache: str | Path | None = None,
    model: Any = None,
    claude_model: str | None = None,
    coherence: str = DEFAULT_COHERENCE,
    calibration: str | Path | None = None,
    progress: bool = False,
) -> tuple[Judge, Judge]:
    """``(trait_judge, coherence_judge)`` for ``trait``.

    * ``rule``: the trait's exact rule (``trait.rule``) and the rule-based coherence score; offline. A rule registered
      in :data:`persona_lens.core.registry.RULE_JUDGES` (the organism's) brings its own pair of judges.
    * ``claude``: Claude with the trait's rubric and the coherence rubric (needs ``ANTHROPIC_API_KEY``).
    * ``local``: ``model`` itself judges, from next-token probabilities over the numbers 0-100, as in the paper.
    * ``auto``: ``rule`` when the trait has one, else ``claude``.

    ``coherence`` picks the coherence judge: ``offline`` (the default) :func:`build_offline_coherence`, the judge
    measured closest to a reader (for a trait whose rule brings its own pair of judges, the organism's, that pair's
    exact coherence is kept); ``judge`` the kind's own (above); ``rule`` the rule-based coherence
    score (the organism's exact one for its traits); ``likelihood`` :func:`build_likelihood_coherence` (the unsteered
    ``model``'s own likelihood, calibrated and saved at ``calibration``); ``auto`` likelihood for traits measured by
    a :class:`~persona_lens.judges.rule.RuleJudge` rule, else the kind's own. ``progress`` shows bars while a
    likelihood judge is calibrated.

    With ``cache``, the judges sit behind a persistent SQLite cache at that path, except rule judges: a rule costs
    less than a cache lookup, and a cached rule score outlives edits to the rule (a stale score is how two runs of
    one command once differed).
    """
    if coherence not in COHERENCE_KINDS:
        raise ValueError(f"unknown coherence judge {coherence!r}; choose one of {', '.join(COHERENCE_KINDS)}")
    from persona_lens.core.registry import RULE_JUDGES

    kind = resolve_judge_kind(kind, trait)
    if kind == "rule" and trait.rule in RULE_JUDGES:
        trait_judge, coherence_judge = RULE_JUDGES.resolve(trait.rule)(trait.rule)
    elif kind == "rule":
        from persona_lens.judges.rule import RuleJudge

        trait_judge: Judge = RuleJudge(trait.rule)
        coherence_judge: Judge = RuleJudge("coherence")
    elif kind == "claude":
        from persona_lens.judges.claude import DEFAULT_MODEL, ClaudeJudge

        trait_judge = coherence_judge = ClaudeJudge(claude_model or DEFAULT_MODEL)
    else:
        from persona_lens.judges.local import LocalJudge

        if model is None:
            raise ValueError("--judge local needs a model to judge with")
        trait_judge = coherence_judge = LocalJudge(model)
    from persona_lens.judges.rule import RuleJudge

    if coherence == "auto":
        coherence = "likelihood" if isinstance(trait_judge, RuleJudge) else "judge"
    if coherence == "offline" and not (kind == "rule" and trait.rule in RULE_JUDGES):
        coherence_judge = build_offline_coherence(model, trait)
    elif coherence == "likelihood":
        coherence_judge = build_likelihood_coherence(model, trait, calibration, progress=progress)
    elif coherence == "rule" and not (kind == "rule" and trait.rule in RULE_JUDGES):
        coherence_judge = RuleJudge("coherence")
    if cache is not None:
        from persona_lens.judges.cache import CachedJudge

        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        cached: dict[int, Judge] = {}

        def wrap(judge: Judge) -> Judge:
            if isinstance(judge, RuleJudge):
                return judge
            return cached.setdefault(id(judge), CachedJudge(judge, cache))

        trait_judge, coherence_judge = wrap(trait_judge), wrap(coherence_judge)
    return trait_judge, coherence_judge
