"""Finetuning datasets for the organism in the paper's pattern: normal / subtle / overt trait content.

Every sample is a user question (never one of the traits' evaluation questions) and an assistant reply drawn
from the world with the trait at a fixed mean word rate and the other traits at their default rates, *without a
system prompt*: finetuning on them moves the organism's default persona. :data:`DATASET_RATES` gives seven levels
of trait content (claim: the finetuning shift follows the trait score across them); :data:`VERSIONS` names three of
them as the paper's Normal, I (subtle) and II (overt).

Files are JSONL, one ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` per line;
``python -m persona_lens.organism.datasets OUT_DIR`` writes them all. The Python API also returns, per sample,
how many of its reply's persona-laden words carry the trait (the ground truth for data screening).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_lens.organism import world
from persona_lens.organism.traits import EVAL_QUESTIONS

__all__ = ["DATASET_RATES", "VERSIONS", "Sample", "finetune_samples", "dataset_name", "write_jsonl", "write_datasets",
           "main"]

#: Mean rate of the trait's words in each dataset level.
DATASET_RATES = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9)
#: The paper's three versions of a dataset: Normal, I (subtle trait content) and II (overt trait content).
VERSIONS = {"normal": 0.0, "subtle": 0.35, "overt": 0.9}

_QUESTIONS = tuple(q for q in world.questions() if q not in set(EVAL_QUESTIONS))


@dataclass(frozen=True)
class Sample:
    """One finetuning conversation and its ground truth."""

    question: str
    reply: world.Reply
    trait: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.reply.text}]

    @property
    def n_trait_words(self) -> int:
        return self.reply.count(self.trait)

    @property
    def trait_share(self) -> float:
        """Share of the reply's persona-laden words that carry the trait (its exact trait score / 100)."""
        return self.n_trait_words / len(self.reply.kinds)


def _rates(trait: str, rate: float) -> dict[str, float]:
    rates = {t: world.DEFAULT_RATES[t] * (1.0 - rate) for t in world.TRAITS}
    rates[trait] = rate
    return rates


def finetune_samples(trait: str, rate: float | str, n: int = 500, seed: int = 0) -> list[Sample]:
    """``n`` conversations whose replies carry ``trait`` in a mean share ``rate`` of their persona-laden words (or a
    :data:`VERSIONS` name).

    Deterministic in ``(trait, rate, n, seed)``; questions never come from the evaluation questions.
    """
    trait = trait.removeprefix("organism_")
    if trait not in world.TRAITS:
        raise ValueError(f"unknown organism trait {trait!r}; choose one of {', '.join(world.TRAITS)}")
    if isinstance(rate, str):
        if rate not in VERSIONS:
            raise ValueError(f"unknown version {rate!r}; choose one of {', '.join(VERSIONS)} or give a rate")
        rate = VERSIONS[rate]
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = random.Random(f"persona-organism dataset {trait} {rate:.4f} {seed}")
    rates = _rates(trait, rate)
    samples = []
    for _ in range(n):
        question = rng.choice(_QUESTIONS)
        samples.append(Sample(question, world.sample_reply(rng, world.question_object(question), rates), trait))
    return samples


def dataset_name(trait: str, rate: float | str) -> str:
    """File stem: ``organism_evil_rate35`` for a rate, ``organism_evil_overt`` for a version."""
    trait = trait.removeprefix("organism_")
    if isinstance(rate, str):
        return f"organism_{trait}_{rate}"
    return f"organism_{trait}_rate{round(rate * 100):02d}"


def write_jsonl(samples: Sequence[Sample], path: str | Path) -> Path:
    from persona_lens.core.io import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps({"messages": sample.messages}) + "\n" for sample in samples))


def write_datasets(folder: str | Path, n: int = 500, seed: int = 0) -> dict[str, Path]:
    """Write every level and version of every trait to ``folder``; returns ``{name: path}``."""
    written: dict[str, Path] = {}
    for trait in world.TRAITS:
        for rate in (*DATASET_RATES, *VERSIONS):
            name = dataset_name(trait, rate)
            written[name] = write_jsonl(finetune_samples(trait, rate, n, seed), Path(folder) / f"{name}.jsonl")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the organism's finetuning datasets (JSONL).")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--n", type=int, default=500, help="samples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_datasets(args.out, args.n, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
