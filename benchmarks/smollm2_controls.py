"""Issue 24's controls on SmolLM2-135M-Instruct (d_model 576) for the traits it expresses: each claim's value beside
random directions of the vector's norm and every other trait's vector, judged by one rule
(:func:`persona_lens.core.controls.beats_controls` / :func:`~persona_lens.core.controls.beats_others`).

Vectors: for each trait, the mean last-prompt activation at ``--layer`` under the trait's positive system prompts
minus that under its negative ones, over the trait's extraction questions (a prompt-contrast vector: no generation,
no judge). Two claims, each on the disjoint evaluation questions:

1. **Screening prompts** (no generation): AUROC of the last-prompt projection for the trait's positive vs negative
   system prompts (5 pairs x the evaluation questions), one-sided against ``--random`` random directions (center
   0.5), and by |AUROC - 0.5| against the other traits' vectors (margin 0.1).
2. **Tracking expression** (``--samples`` sampled replies per prompt, T=1, the rule judge): r(last-prompt projection,
   the trait score of the reply) over (prompt, question), positive and negative prompts pooled; one-sided against
   random directions, by |r| against the other traits' vectors (margin 0.1).

    PYTHONPATH=. python benchmarks/smollm2_controls.py                      # CPU minutes (generation for claim 2)
    PYTHONPATH=. python benchmarks/smollm2_controls.py --no-generate        # claim 1 only: seconds

Prints one table row per (claim, trait); ``--json PATH`` writes the same figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

import persona_lens as pl
from persona_lens.core.chat import make_messages
from persona_lens.core.controls import ControlVerdict, OthersVerdict, beats_controls, beats_others, random_directions
from persona_lens.core.generation import generate
from persona_lens.core.stats import auroc, pearson
from persona_lens.experiments.monitor import last_prompt_activations
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait

TRAITS = ("pirate", "french", "emoji", "enthusiastic")
LAYER = 20
N_RANDOM = 200
PERCENTILE = 95.0
CROSS_TRAIT_MARGIN = 0.1


@dataclass
class Claim:
    """One claim's value for one trait, beside its random directions and the other traits' vectors."""

    claim: str
    trait: str
    value: float
    random: ControlVerdict
    others: OthersVerdict

    @property
    def passed(self) -> bool:
        return self.random.passed and self.others.passed

    def row(self) -> str:
        others = ", ".join(f"{k} {v:.3f}" for k, v in self.others.others.items())
        threshold = self.random.threshold + self.random.center  # back in the value's units
        return (
            f"| {self.claim} | {self.trait} | {self.value:.3f} | {threshold:.3f} | "
            f"{self.random.rank:.1f} | {others} | {'beats' if self.passed else 'does not beat'} |"
        )

    def to_dict(self) -> dict:
        return {
            "claim": self.claim,
            "trait": self.trait,
            "value": self.value,
            "random": self.random.to_dict(),
            "others": self.others.to_dict(),
            "passed": self.passed,
        }


def _prompts(trait_name: str, questions: str, n_questions: int | None) -> tuple[list, list[int]]:
    """``(conversations, labels)``: every (prompt pair, question), the positive prompt (label 1) and the negative."""
    trait = load_trait(trait_name)
    chosen = list(getattr(trait, f"{questions}_questions"))[:n_questions]
    conversations, labels = [], []
    for pair in trait.prompt_pairs:
        for question in chosen:
            conversations += [
                make_messages(question, system=pair.positive),
                make_messages(question, system=pair.negative),
            ]
            labels += [1, 0]
    return conversations, labels


def prompt_contrast_vectors(
    model: pl.HookedLM, traits: Sequence[str], layer: int, *, n_questions: int | None = None
) -> dict[str, Float[Tensor, " d_model"]]:
    """Per trait: mean last-prompt activation at ``layer`` under the positive prompts minus under the negative ones,
    over the trait's extraction questions."""
    vectors = {}
    for name in traits:
        conversations, labels = _prompts(name, "extract", n_questions)
        acts = last_prompt_activations(model, conversations, [layer], batch_size=16)[:, 0]
        mask = torch.tensor(labels, dtype=torch.bool)
        vectors[name] = acts[mask].mean(0) - acts[~mask].mean(0)
    return vectors


def _claim(
    claim: str, trait: str, value: float, random: Sequence[float], others: dict[str, float], *, center: float = 0.0
) -> Claim:
    return Claim(
        claim,
        trait,
        value,
        beats_controls(value, random, two_sided=False, percentile=PERCENTILE, center=center),
        beats_others(value, others, two_sided=True, margin=CROSS_TRAIT_MARGIN, center=center),
    )


def _units(vectors: dict[str, Tensor], trait: str, k: int, seed: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The trait's unit vector, ``k`` seeded random unit directions, the other traits' unit vectors."""
    unit = vectors[trait] / vectors[trait].norm()
    randoms = random_directions(unit.shape[0], k, seed=seed)
    others = {o: v / v.norm() for o, v in vectors.items() if o != trait}
    return unit, randoms, others


def screen_prompts(
    model: pl.HookedLM,
    vectors: dict[str, Tensor],
    trait: str,
    layer: int,
    *,
    k: int = N_RANDOM,
    seed: int = 0,
    n_questions: int | None = None,
) -> Claim:
    """Claim 1: AUROC of the last-prompt projection, positive vs negative prompts, on the evaluation questions."""
    conversations, labels = _prompts(trait, "eval", n_questions)
    acts = last_prompt_activations(model, conversations, [layer], batch_size=16)[:, 0]
    unit, randoms, others = _units(vectors, trait, k, seed)
    y = np.asarray(labels)
    return _claim(
        "AUROC(pos vs neg prompt)",
        trait,
        auroc((acts @ unit).numpy(), y),
        [auroc(p, y) for p in (acts @ randoms.T).T.numpy()],
        {o: auroc((acts @ u).numpy(), y) for o, u in others.items()},
        center=0.5,
    )


def track_expression(
    model: pl.HookedLM,
    vectors: dict[str, Tensor],
    trait: str,
    layer: int,
    *,
    k: int = N_RANDOM,
    seed: int = 0,
    n_questions: int | None = 10,
    samples: int = 1,
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> tuple[Claim, dict]:
    """Claim 2: r(last-prompt projection, rule trait score of the sampled reply) over (prompt, question)."""
    conversations, labels = _prompts(trait, "eval", n_questions)
    acts = last_prompt_activations(model, conversations, [layer], batch_size=16)[:, 0]
    replies = generate(
        model,
        [c for c in conversations for _ in range(samples)],
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    items = [
        (c[-1]["content"], text) for c, text in zip([c for c in conversations for _ in range(samples)], replies.texts)
    ]
    scores = np.array(RuleJudge(trait).score("", items), dtype=float).reshape(len(conversations), samples)
    expressed = np.nanmean(scores, axis=1)
    unit, randoms, others = _units(vectors, trait, k, seed)
    claim = _claim(
        "r(projection, trait score)",
        trait,
        pearson((acts @ unit).numpy(), expressed),
        [pearson(p, expressed) for p in (acts @ randoms.T).T.numpy()],
        {o: pearson((acts @ u).numpy(), expressed) for o, u in others.items()},
    )
    y = np.asarray(labels, dtype=bool)
    detail = {
        "mean_score_positive": float(np.nanmean(expressed[y])),
        "mean_score_negative": float(np.nanmean(expressed[~y])),
        "n": len(conversations),
        "example_positive": replies.texts[0],
    }
    return claim, detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traits", default=",".join(TRAITS))
    parser.add_argument("--layer", type=int, default=LAYER)
    parser.add_argument("--random", type=int, default=N_RANDOM)
    parser.add_argument("--vector-questions", type=int, default=5, help="extraction questions for the vectors")
    parser.add_argument("--questions", type=int, default=10, help="evaluation questions for both claims")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--no-generate", action="store_true", help="claim 1 only (no generation)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    traits = [t for t in args.traits.split(",") if t]
    torch.manual_seed(0)
    start = time.perf_counter()
    model = pl.load_model("smollm2-135m-instruct", device="cpu")
    vectors = prompt_contrast_vectors(model, traits, args.layer, n_questions=args.vector_questions)
    names = list(vectors)
    cosines = {
        f"{a}-{b}": round(float(vectors[a] @ vectors[b] / vectors[a].norm() / vectors[b].norm()), 3)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    print(
        f"SmolLM2-135M-Instruct, layer {args.layer}, d_model {model.cfg.d_model}; prompt-contrast vectors "
        f"({args.vector_questions} extraction questions x 5 pairs) cosines {cosines} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    claims, details = [], {}
    for trait in traits:
        claims.append(screen_prompts(model, vectors, trait, args.layer, k=args.random, n_questions=args.questions))
    if not args.no_generate:
        for trait in traits:
            claim, details[trait] = track_expression(
                model,
                vectors,
                trait,
                args.layer,
                k=args.random,
                n_questions=args.questions,
                samples=args.samples,
                max_new_tokens=args.max_new_tokens,
            )
            claims.append(claim)
            print(
                f"  {trait}: mean rule score under positive prompts {details[trait]['mean_score_positive']:.1f}, "
                f"negative {details[trait]['mean_score_negative']:.1f}; a reply under the first positive prompt: "
                f"{details[trait]['example_positive']!r}"
            )
    print(
        f"\n| claim | trait | value | random p{PERCENTILE:g} (n={args.random}, one-sided) | rank | other traits' "
        f"vectors | verdict (margin {CROSS_TRAIT_MARGIN} by abs) |\n|---|---|---|---|---|---|---|"
    )
    for claim in claims:
        print(claim.row())
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"layer": args.layer, "cosines": cosines, "claims": [c.to_dict() for c in claims], "details": details},
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
