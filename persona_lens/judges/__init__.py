"""Judges score (question, answer) pairs against a rubric: 0-100, or None for a refusal / no number.

``RuleJudge`` (exact rules, offline), ``ClaudeJudge`` (Anthropic API), ``LocalJudge`` (a local model scores from
number-token probabilities, as in the paper), ``LikelihoodCoherenceJudge`` (coherence from the reply's likelihood)
and ``CachedJudge`` (a persistent SQLite cache in front of any judge); ``build_judges`` makes the pair a CLI option
names. The offline coherence judge, every command's default, is ``OfflineCoherenceJudge`` (a logistic regression
fitted to readers' labels); ``load_labeled_set``, ``evaluate_scores`` and ``format_report`` measure any judge
against readers' labels. The names below are re-exported
lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "persona_lens.judges.base": ["COHERENCE_RUBRIC", "Judge", "Score", "JudgeAuthError", "fill_rubric"],
        "persona_lens.judges.cache": ["CachedJudge", "DetailedJudge", "Verdict"],
        "persona_lens.judges.rule": ["RULES", "RuleJudge"],
        "persona_lens.judges.claude": ["ClaudeJudge", "MissingAPIKeyError"],
        "persona_lens.judges.local": ["LocalJudge"],
        "persona_lens.judges.likelihood": ["LikelihoodCoherenceJudge", "calibrate_coherence"],
        "persona_lens.judges.factory": ["JUDGE_KINDS", "COHERENCE_KINDS", "build_judges"],
        "persona_lens.judges.offline": ["OfflineCoherenceJudge"],
        "persona_lens.judges.evaluate": [
            "AgreementReport",
            "LabeledSet",
            "evaluate_scores",
            "format_report",
            "load_labeled_set",
            "measure_agreement",
            "reading_agreement",
        ],
    },
)

if TYPE_CHECKING:
    from persona_lens.judges.base import COHERENCE_RUBRIC, Judge, JudgeAuthError, Score, fill_rubric
    from persona_lens.judges.cache import CachedJudge, DetailedJudge, Verdict
    from persona_lens.judges.claude import ClaudeJudge, MissingAPIKeyError
    from persona_lens.judges.evaluate import (
        AgreementReport,
        LabeledSet,
        evaluate_scores,
        format_report,
        load_labeled_set,
        measure_agreement,
        reading_agreement,
    )
    from persona_lens.judges.factory import COHERENCE_KINDS, JUDGE_KINDS, build_judges
    from persona_lens.judges.likelihood import LikelihoodCoherenceJudge, calibrate_coherence
    from persona_lens.judges.local import LocalJudge
    from persona_lens.judges.offline import OfflineCoherenceJudge
    from persona_lens.judges.rule import RULES, RuleJudge
