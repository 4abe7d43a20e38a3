"""Persona space on the model organism (issue 17): the figures of ``tests/organism/test_space.py``, and capping at
more settings than the test asserts (the test's setting, layers 2-3 at the 25th percentile, was fixed before
measuring; the others here are exploration, reported as such in benchmarks/RESULTS.md).

    PYTHONPATH=. python benchmarks/organism_space.py --out /tmp/organism_space

Everything beside its control: |cos(PC1, axis)| beside 100 random directions and the other components; drift
beside random directions and, paired, beside an ordinary conversation with the same user turns; capping beside
the same capping along 5 random directions (norm-matched, same layers, same percentile along each).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from persona_lens.core.controls import Baseline
from persona_lens.experiments import space as sp
from persona_lens.judges.factory import build_judges
from persona_lens.organism import load_organism
from persona_lens.organism.roles import ROLE_TRAITS, scripted_conversation
from persona_lens.traits.roles import load_roles


def judges(role):
    return build_judges("rule", role)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/organism_space"))
    parser.add_argument("--layer", type=int, default=3, help="layer of the drift (the organism's monitoring layer)")
    parser.add_argument("--random", type=int, default=100)
    parser.add_argument("--cap-random", type=int, default=5)
    parser.add_argument(
        "--cap",
        nargs="+",
        default=["2-3:25", "2-3:50", "1:25", "1:50", "1-4:25", "1-4:50"],
        help="capping settings LAYERS:PERCENTILE (first = the test's)",
    )
    parser.add_argument(
        "--positions", default="response", choices=("response", "all"), help="where the cap acts (the test: response)"
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="another training run's folder (default: the committed weights)"
    )
    parser.add_argument("--skip-caps", action="store_true", help="only the space, alignment and drift")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling of the capping evaluation (default greedy, as the test; seeds per reply are "
        "the same with and without capping)",
    )
    args = parser.parse_args()

    model = load_organism("cpu", path=args.weights)
    roles = load_roles(role_set="organism")
    start = time.time()
    config = sp.SpaceConfig(n_samples=2, max_new_tokens=48, temperature=1.0, batch_size=100)
    space = sp.build_space(
        model, roles, judges=judges, config=config, out_dir=args.out / "space", cap_controls=args.cap_random
    )
    print(f"built in {time.time() - start:.0f} s")
    for name, report in space.meta["roles"].items():
        print(f"   {name}: kept {report['n_kept']} of {report['n_replies']}, in-role rate {report['in_role_rate']:.3f}")

    print(f"\n1. |cos(PC1, axis)| beside {args.random} random directions and the other components")
    for row in sp.axis_alignment(space, k_random=args.random)["layers"]:
        print(f"   layer {row['layer']}: PC1 var {row['explained'][0]:.2f} | {row['pc1_axis_summary']}")

    layer = args.layer
    print(f"\n2. drift at layer {layer} (first - last turn; positive = away from the Assistant)")
    ordinary = sp.project_conversation(
        model, space, scripted_conversation(None, [0, 0, 0]), layer=layer, k_random=args.random
    )
    low, high = ordinary.default_band[0][layer], ordinary.default_band[1][layer]
    print(f"   default band (5-95%): {low:.3g}..{high:.3g}")
    turns = ", ".join(f"{v:.3g}" for v in ordinary.turn_projections[:, layer].tolist())
    print(f"   ordinary: turns {turns} | {ordinary.drift.summary()}")
    for role, trait in ROLE_TRAITS.items():
        into = sp.project_conversation(
            model, space, scripted_conversation(trait, [0, 1, 2]), layer=layer, k_random=args.random
        )
        turns = ", ".join(f"{v:.3g}" for v in into.turn_projections[:, layer].tolist())
        print(f"   into {role}: turns {turns} | {into.drift.summary()}")
        print(f"      paired with the ordinary one: {sp.compare_drift(into, ordinary, k_random=args.random).summary()}")

    eval_config = sp.SpaceConfig(temperature=args.temperature, max_new_tokens=48, batch_size=100)
    for setting in [] if args.skip_caps else args.cap:
        layers_text, percentile = setting.split(":")
        first, _, last = layers_text.partition("-")
        layers = list(range(int(first), int(last or first) + 1))
        settings = sp.calibrate_cap(
            space, layers, percentile=float(percentile), k_random=args.cap_random, positions=args.positions
        )
        start = time.time()
        folder = f"cap_{layers_text}_p{percentile}_t{args.temperature:g}_{args.positions}"
        result = sp.evaluate_capping(
            model, roles, settings, judges=judges, config=eval_config, out_dir=args.out / folder
        )
        print(
            f"\n3. capping layers {layers} at the {percentile}th percentile ({args.positions} positions), "
            f"thresholds "
            f"{[round(t, 3) for t in settings.thresholds]} ({time.time() - start:.0f} s, temperature "
            f"{args.temperature:g})"
        )
        for row in result.rows:
            randoms = ", ".join(f"{v:.2f}" for v in row["in_role_rate_random"])
            print(
                f"   {row['role']}: in-role {row['in_role_rate_uncapped']:.2f} -> {row['in_role_rate_capped']:.2f} "
                f"(n={row['n']}) | random directions {randoms}"
            )
        pooled = result.control["pooled"]
        print("   pooled in-role: " + ", ".join(f"{k} {v['in_role']}/{v['scored']}" for k, v in pooled.items()))
        print(f"   {Baseline.from_dict(result.control['drop']).summary()}")
        d = result.default
        print(
            f"   default replies: exact {d['exact_match_rate']:.2f}, mean common prefix "
            f"{d['mean_common_prefix']:.2f} (n={d['n']}) | random directions exact "
            f"{', '.join(f'{v:.2f}' for v in d['exact_match_rate_random'])}"
        )
        for row in result.rows[:3]:
            print(
                f"   {row['role']} verbatim: uncapped {row['examples_uncapped'][0]!r}\n"
                f"   {' ' * len(row['role'])}           capped   {row['examples_capped'][0]!r}"
            )


if __name__ == "__main__":
    main()
