"""PC1 of the persona space vs the Assistant axis on SmolLM2-135M-Instruct with every role of ``traits/roles/``
(the default Assistant and 13 roles; roles of which no reply is kept are skipped and named), against random
directions *within the roles' own span*.

With three non-default roles (the organism) the PCA has two components, so PC1 lies in the roles' plane by
construction and a random direction of all ``d_model`` only tests that the axis lies near that plane. Here the span
of the centred role vectors has up to 12 dimensions (10 in the run recorded in
benchmarks/results/organism-claims.md: 11 roles kept); the claim is that |cos(PC1, axis)| lies beyond the 95th
percentile of ``--random`` seeded random unit directions drawn within that span
(:func:`persona_lens.experiments.space.measure_pc1_in_span`, two-sided by |cos|). The random-in-``d_model`` band
(:func:`persona_lens.experiments.space.axis_alignment`) is printed beside it.

The space is built through the project's own code (:func:`persona_lens.experiments.space.build_space`, as
``persona_lens space build --judge rule --coherence rule`` does): replies under each role's first ``--prompts``
system prompts to the first ``--questions`` build questions, sampled at T=1 (seeded), ``--tokens`` new tokens each;
roles with a rule (pirate, french, emoji, enthusiastic, shouting) keep their in-role replies, roles without one
(child, cowboy, detective, grandma, knight, poet, robot, villain) keep every coherent reply (``judged: false``).

    PYTHONPATH=. python benchmarks/smollm2_roles_axis.py                       # CPU minutes
    PYTHONPATH=. python benchmarks/smollm2_roles_axis.py --layers 10,15,20,25 --json roles_axis.json

Prints the roles kept, one reply per role (verbatim, the first kept), and one row per layer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import persona_lens as pl
from persona_lens.core.io import JsonlRecords
from persona_lens.experiments import space as sp
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.roles import Role, RoleSet, list_roles, load_roles

N_RANDOM = 200


def rule_judges(role: Role) -> tuple[RuleJudge | None, RuleJudge]:
    """The role's rule judge (None for a role without a rule: every coherent reply kept) and rule coherence."""
    return (None if role.rule is None else RuleJudge(role.rule)), RuleJudge("coherence")


def build_smollm2_space(
    model: pl.HookedLM, out: Path, *, questions: int, prompts: int, tokens: int, temperature: float
) -> tuple[sp.PersonaSpace, RoleSet]:
    """Every role of ``traits/roles/`` through :func:`~persona_lens.experiments.space.build_space` (seed 0)."""
    roles = load_roles(list_roles())
    config = sp.SpaceConfig(
        n_questions=questions, n_prompts=prompts, max_new_tokens=tokens, batch_size=32, temperature=temperature
    )
    space = sp.build_space(model, roles, judges=rule_judges, config=config, out_dir=out, cap_controls=0)
    assert space is not None
    return space, roles


def first_replies(out: Path, space: sp.PersonaSpace) -> dict[str, str]:
    """The first kept reply of each role, verbatim."""
    replies = {}
    for name, report in space.meta["roles"].items():
        stored = JsonlRecords(out / "roles" / name / "responses.jsonl").load()
        if report["kept_keys"]:
            replies[name] = stored[report["kept_keys"][0]]["response"]
    return replies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--layers", default="5,10,15,20,25,30")
    parser.add_argument("--random", type=int, default=N_RANDOM)
    parser.add_argument("--out", default=None, help="keep the role units here (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = pl.load_model("smollm2-135m-instruct", device="cpu")
    out = Path(args.out or tempfile.mkdtemp(prefix="roles_axis_"))
    start = time.perf_counter()
    space, _ = build_smollm2_space(
        model, out, questions=args.questions, prompts=args.prompts, tokens=args.tokens, temperature=args.temperature
    )
    built_s = time.perf_counter() - start
    print(f"space built in {built_s:.0f} s; skipped: {sorted(space.meta['skipped'])}")
    for name, report in space.meta["roles"].items():
        rate = report["in_role_rate"]
        print(
            f"  {name}: kept {report['n_kept']}/{report['n_replies']}, in-role rate "
            f"{'unjudged' if rate is None else f'{rate:.2f}'}, dropped {report['dropped']}"
        )
    for name, reply in first_replies(out, space).items():  # quoted in the results page
        print(f"  {name!r} first kept reply: {reply!r}")
    layers = [int(x) for x in args.layers.split(",")]
    alignment = sp.axis_alignment(space, k_random=args.random, layers=layers)
    rows = []
    print("\n| layer | PC1 var | \\|cos(PC1, axis)\\| | span rank | axis in span | in-span p95 (rank) | d_model p95 |")
    print("|---|---|---|---|---|---|---|")
    for layer, row in zip(layers, alignment["layers"]):
        span = sp.measure_pc1_in_span(space, layer, k_random=args.random)
        d_model = row["pc1_axis"]
        print(
            f"| {layer} | {row['explained'][0]:.2f} | {span.value:.3f} | {span.span_rank} | "
            f"{100 * span.axis_share_in_span:.1f}% | {span.verdict.threshold:.3f} ({span.verdict.rank:.1f}) | "
            f"{d_model['random_p95']:.3f} ({d_model['percentile']:.1f}) |"
        )
        rows.append({"span": span.to_dict(), "d_model": d_model, "explained": row["explained"]})
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "roles": space.meta["roles"], "layers": rows, "built_s": built_s})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
