"""Choosing judges by name, as the CLI does: ``rule``, ``claude``, ``local`` or ``auto``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persona_lens.judges.base import Judge

__all__ = ["JUDGE_KINDS", "build_judges", "resolve_judge_kind"]

JUDGE_KINDS = ("auto", "rule", "claude", "local")


def resolve_judge_kind(kind: str, trait: Any) -> str:
    """``kind`` with ``auto`` resolved, after checking it can score ``trait`` here (a rule to apply, an API key);
    needs no model, so the CLI checks it before loading one."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge {kind!r}; choose one of {', '.join(JUDGE_KINDS)}")
    if kind == "auto":
        kind = "rule" if trait.rule else "claude"
    if kind == "rule" and not trait.rule:
        raise ValueError(f"trait {trait.name!r} has no rule; use --judge claude (or local), or add a \"rule\" "
                         "to its JSON file")
    if kind == "claude" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise ValueError("--judge claude needs an API key: export ANTHROPIC_API_KEY=sk-ant-... "
                         "(or use --judge rule for a rule-measurable trait, or --judge local)")
    return kind


def build_judges(kind: str, trait: Any, *, cache: str | Path | None = None, model: Any = None,
                 claude_model: str | None = None) -> tuple[Judge, Judge]:
    """``(trait_judge, coherence_judge)`` for ``trait``.

    * ``rule``: the trait's exact rule (``trait.rule``) and the rule-based coherence score; offline. A rule registered
      in :data:`persona_lens.core.registry.RULE_JUDGES` (the organism's) brings its own pair of judges.
    * ``claude``: Claude with the trait's rubric and the coherence rubric (needs ``ANTHROPIC_API_KEY``).
    * ``local``: ``model`` itself judges, from next-token probabilities over the numbers 0-100, as in the paper.
    * ``auto``: ``rule`` when the trait has one, else ``claude``.

    With ``cache``, both judges sit behind a persistent SQLite cache at that path.
    """
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
    if cache is not None:
        from persona_lens.judges.cache import CachedJudge

        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        same = coherence_judge is trait_judge
        trait_judge = CachedJudge(trait_judge, cache)
        coherence_judge = trait_judge if same else CachedJudge(coherence_judge, cache)
    return trait_judge, coherence_judge
