"""Judges score (question, answer) pairs against a rubric: 0-100, or None for a refusal / no number.

``RuleJudge`` (exact rules, offline), ``ClaudeJudge`` (Anthropic API), ``LocalJudge`` (a local model scores from
number-token probabilities, as in the paper) and ``CachedJudge`` (a persistent SQLite cache in front of any judge).
Heavy judges are imported on first use.
"""

from typing import Any

from persona_lens.judges.base import COHERENCE_RUBRIC, Judge, Score, fill_rubric
from persona_lens.judges.cache import CachedJudge, DetailedJudge, Verdict
from persona_lens.judges.rule import RULES, RuleJudge

__all__ = ["COHERENCE_RUBRIC", "CachedJudge", "ClaudeJudge", "DetailedJudge", "Judge", "LocalJudge", "RULES",
           "RuleJudge", "Score", "Verdict", "fill_rubric"]


def __getattr__(name: str) -> Any:
    if name == "ClaudeJudge":
        from persona_lens.judges.claude import ClaudeJudge

        return ClaudeJudge
    if name == "LocalJudge":
        from persona_lens.judges.local import LocalJudge

        return LocalJudge
    raise AttributeError(name)
