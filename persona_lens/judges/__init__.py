"""Judges score (question, answer) pairs against a rubric: 0-100, or None for a refusal / no number."""

from persona_lens.judges.base import COHERENCE_RUBRIC, Judge, Score, fill_rubric

__all__ = ["COHERENCE_RUBRIC", "Judge", "Score", "fill_rubric"]
