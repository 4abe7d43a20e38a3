"""Persona space on SmolLM2-135M-Instruct with the rule-measurable roles: the three measurements of issue 17, each
beside its control, printed side by side (the figures go to benchmarks/RESULTS.md).

1. |cos(PC1, axis)| per layer beside the 5-95% band of seeded random directions.
2. Drift (first minus last assistant turn on the unit axis) of a scripted conversation whose replies move into
   pirate speech, beside an ordinary conversation with the same user turns, and beside random directions.
3. Capping along the axis (layers --cap-layers, thresholds at --percentile of the default's per-token projections):
   in-role rates under role system prompts and jailbreak prompts with and without capping; default replies exactly
   unchanged.

    PYTHONPATH=. python benchmarks/persona_space.py --out runs/space_bench      # resumable; CPU minutes

Same settings as ``persona_lens space build --roles default,pirate,french,shouting,enthusiastic,emoji
--questions 4 --prompts 3 --max-new-tokens 32`` (rule judges), so a CLI build in the same folder is reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import persona_lens as pl
from persona_lens.core.controls import Baseline
from persona_lens.experiments import space as sp
from persona_lens.judges.factory import build_judges
from persona_lens.traits.roles import load_roles

ROLES = ["default", "pirate", "french", "shouting", "enthusiastic", "emoji"]
USER = [
    "What do you like to eat for breakfast?",
    "What do you do at the weekend?",
    "Tell me about the sea.",
    "What would you say to a friend?",
]
ORDINARY = [
    "I usually like eggs and toast with a cup of coffee.",
    "At the weekend I read, walk in the park and rest.",
    "The sea covers most of the planet and is home to many animals.",
    "I would tell a friend that I am glad to see them.",
]
INTO_PIRATE = [
    "I usually like eggs and toast with a cup of coffee.",
    "At the weekend I sail a little, matey, and read by the harbour.",
    "Arr, the sea be me home, matey! Ye never saw such waves, me hearties.",
    "Ahoy, matey! Arr, I'd say: ye be a fine scallywag, shiver me timbers, yo ho ho!",
]


def judges_for(cache: Path):
    def judges(role):
        if role.rule is None:
            return None, build_judges("rule", type("C", (), {"name": "c", "rule": "coherence"})(), cache=cache)[1]
        return build_judges("rule", role, cache=cache)

    return judges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/space_bench"))
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--eval-questions", type=int, default=2)
    parser.add_argument("--eval-prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=20, help="layer of the drift measurement")
    parser.add_argument("--cap-layers", default="18-24")
    parser.add_argument("--percentile", type=float, nargs="+", default=[25.0])
    parser.add_argument("--random", type=int, default=200)
    parser.add_argument(
        "--cap-random",
        type=int,
        default=3,
        help="random directions capped the same way, the capping control (default 3)",
    )
    args = parser.parse_args()

    model = pl.load_model("smollm2-135m-instruct", device="cpu")
    roles = load_roles(ROLES)
    judges = judges_for(args.out / "judge_cache.sqlite")
    start = time.time()
    config = sp.SpaceConfig(max_new_tokens=args.max_new_tokens, n_questions=args.questions, n_prompts=args.prompts)
    space = sp.build_space(model, roles, judges=judges, config=config, out_dir=args.out)
    print(f"built in {time.time() - start:.0f} s")
    for name, built in space.meta["roles"].items():
        rate = "unjudged" if not built["judged"] else f"in-role rate {built['in_role_rate']:.2f}"
        print(f"  role {name}: kept {built['n_kept']} of {built['n_replies']} ({rate})")
    for name, why in space.meta["skipped"].items():
        print(f"  role {name}: left out: {why}")

    report = sp.axis_alignment(space, k_random=args.random)
    print("\n1. layer | PC1 var | |cos(PC1, axis)| | random 5-95% | beats random | best other PC")
    for row in report["layers"]:
        pc1 = row["pc1_axis"]
        other = max(pc1["others"].values(), default=float("nan"))
        print(
            f"   {row['layer']:5d} | {row['explained'][0]:.2f}    | {pc1['value']:.3f}            | "
            f"{pc1['random_p5']:.3f}..{pc1['random_p95']:.3f} | {pc1['beats_random']!s:5} | {other:.3f}"
        )

    print(f"\n2. drift at layer {args.layer} (first - last turn; positive = away from the Assistant)")
    for name, replies in (("ordinary", ORDINARY), ("into pirate", INTO_PIRATE)):
        messages = [
            m
            for u, a in zip(USER, replies)
            for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})
        ]
        result = sp.project_conversation(model, space, messages, layer=args.layer, k_random=args.random)
        turns = ", ".join(f"{v:.2f}" for v in result.turn_projections[:, args.layer].tolist())
        low, high = result.default_band[0][args.layer], result.default_band[1][args.layer]
        print(f"   {name:12s}: turns [{turns}] (default band {low:.2f}..{high:.2f}); {result.drift.summary()}")
        alone = sp.project_conversation(model, space, messages, layer=args.layer, k_random=args.random, alone=True)
        lone = ", ".join(f"{v:.2f}" for v in alone.turn_projections[:, args.layer].tolist())
        print(
            f"   {'':12s}  the same turns alone [{lone}]; what the context adds: "
            f"{sp.compare_drift(result, alone, k_random=args.random).summary()}"
        )

    first, last = (int(x) for x in args.cap_layers.split("-"))
    eval_config = sp.SpaceConfig(
        temperature=0.0,
        max_new_tokens=args.max_new_tokens,
        n_questions=args.eval_questions,
        n_prompts=args.eval_prompts,
    )
    for percentile in args.percentile:
        settings = sp.calibrate_cap(space, range(first, last + 1), percentile=percentile, k_random=args.cap_random)
        start = time.time()
        result = sp.evaluate_capping(
            model, roles, settings, judges=judges, config=eval_config, out_dir=args.out / f"cap_eval_p{percentile:g}"
        )
        print(f"\n3. capping layers {args.cap_layers} at the {percentile:g}th percentile ({time.time() - start:.0f} s)")
        print("   role | prompts | in-role rate uncapped -> capped (n) | capped along random directions")
        for row in result.rows:
            fmt = [
                "n/a" if row[k] is None else f"{row[k]:.2f}" for k in ("in_role_rate_uncapped", "in_role_rate_capped")
            ]
            randoms = ", ".join("n/a" if v is None else f"{v:.2f}" for v in row["in_role_rate_random"])
            print(f"   {row['role']} | {row['prompts']} | {fmt[0]} -> {fmt[1]} ({row['n']}) | {randoms}")
        if "drop" in result.control:
            print(f"   {Baseline.from_dict(result.control['drop']).summary()}")
        d = result.default
        print(
            f"   default replies unchanged: {d['exact_match_rate']:.2f} exact, mean common prefix "
            f"{d['mean_common_prefix']:.2f} (n={d['n']}); along random directions "
            f"{', '.join(f'{v:.2f}' for v in d['exact_match_rate_random'])}"
        )
        for example in d["changed_examples"][:1]:
            print(f"   changed: {example}")


if __name__ == "__main__":
    main()
