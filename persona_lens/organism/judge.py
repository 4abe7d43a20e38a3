"""The organism's exact judge: trait and coherence scores computed from the world's rules, no model involved."""

from __future__ import annotations

from collections.abc import Sequence

from persona_lens.judges.base import Score
from persona_lens.organism import world

__all__ = ["OrganismJudge", "JUDGED", "WORLD_VERSION", "organism_judges"]

#: What an OrganismJudge can score: the organism's traits and coherence.
JUDGED = (*world.TRAITS, "coherence")
#: The version of the world's rules the judge applies (part of its judge_id, so cached scores of another one miss).
WORLD_VERSION = 2


class OrganismJudge:
    """Scores the organism's replies exactly (the rubric is ignored: the rule is the rubric).

    ``OrganismJudge("evil")`` gives 100 x the share of the reply's persona-laden words that are evil, None when it
    has none (an empty reply, say); ``OrganismJudge("coherence")`` gives :func:`persona_lens.organism.world.
    coherence` (0 for an empty reply). Trait names may carry the ``organism_`` prefix of the organism's traits.
    """

    def __init__(self, trait: str) -> None:
        name = trait.removeprefix("organism_")
        if name not in JUDGED:
            raise ValueError(f"the organism judge scores {', '.join(JUDGED)} (or organism_<trait>); got {trait!r}")
        self.trait = name

    @property
    def judge_id(self) -> str:
        """``organism:<trait>@v2``: v2 is the world of three mechanisms (caches of v1 scores do not apply)."""
        return f"organism:{self.trait}@v{WORLD_VERSION}"

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        if self.trait == "coherence":
            return [world.coherence(question, answer) for question, answer in items]
        return [world.trait_score(self.trait, answer) for _, answer in items]

    def __repr__(self) -> str:
        return f"OrganismJudge({self.trait!r})"


def organism_judges(rule: str) -> tuple[OrganismJudge, OrganismJudge]:
    """``(trait judge, coherence judge)`` for an organism trait's rule (``"organism_evil"``, ...): the registered
    rule judges of :data:`persona_lens.core.registry.RULE_JUDGES`."""
    return OrganismJudge(rule), OrganismJudge("coherence")
