"""``python -m persona_lens monitor``: project prompts on persona vectors, run the monitoring sweeps, colour tokens.

Subcommands:

* ``monitor project``: the last-prompt-token projection of some prompts on one or more vectors;
* ``monitor sweep``: the system-prompt and/or many-shot sweep of a trait: generate, judge, correlate, plot;
* ``monitor tokens``: generate replies and write an HTML page colouring each token by its projection.

"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_OK, BadInput
from persona_lens.cli.controls import add_control_arguments, baseline_line, check_controls
from persona_lens.cli.options import (
    add_generation_options,
    add_judge_options,
    add_layer_option,
    add_model_options,
    add_vector_arguments,
    check_judge_arg,
    check_out_file,
    check_positive,
    count_arg,
    default_run_dir,
    default_vector_paths,
    judges_from_args,
    load_model_layer_vectors,
    load_trait_arg,
    load_vectors_arg,
    lock_out,
    out_path,
    parse_int_list,
    read_prompts,
    slug,
)

__all__ = [
    "configure_parser",
    "run_project",
    "run_sweep",
    "run_tokens",
]


def _prompts_from_args(args: argparse.Namespace) -> list[list[dict[str, str]]]:
    from persona_lens.core.chat import make_messages

    if args.prompts is not None and args.question:
        raise BadInput("give --question or --prompts, not both")
    if args.prompts is not None:
        return read_prompts(args.prompts)
    if args.question:
        return [make_messages(q, system=args.system) for q in args.question]
    raise BadInput("give at least one --question, or --prompts FILE")


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question", action="append", metavar="TEXT", help="a user question (repeat for several)")
    parser.add_argument("--system", metavar="TEXT", default=None, help="system prompt for every --question")
    parser.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help='prompts file: .txt (one question a line) or .jsonl ({"messages": [...]} or '
        '{"question": ..., "system": ...} a line)',
    )


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------------------------------
# parser


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="monitor persona vectors: last-prompt projections, system-prompt / many-shot sweeps, token colouring",
        description=(
            "Monitoring (paper section 4): the projection of the last prompt token's activation (before the reply) "
            "on the unit persona vector at one layer predicts how strongly the reply will show the trait. "
            "Layers: 0 = embeddings, l = output of block l."
        ),
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    commands = parser.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND")

    project = commands.add_parser(
        "project",
        help="last-prompt-token projection of prompts on one or more vectors",
        description="Print the projection of each prompt's last token (at --layer) on the unit vector of each "
        "--vector; no generation.",
    )
    add_model_options(project)
    add_vector_arguments(project, trait_option=True)
    add_layer_option(project)
    _add_prompt_arguments(project)
    add_generation_options(project, batch_size=8, helps={"batch_size": "prompts per forward pass"})
    project.add_argument("--json", action="store_true", help="print machine-readable JSON")
    project.set_defaults(func=run_project)

    sweep = commands.add_parser(
        "sweep",
        help="system-prompt and/or many-shot sweep: generate, judge, correlate projection with score",
        description=(
            "For each condition (the trait's 8 graded system prompts, or 0/5/10/15/20 trait examples as earlier "
            "turns) and each eval question: project the last prompt token on each vector, generate --samples "
            "replies, judge them. Reports per-condition mean projection and score, and the correlation of "
            "projection with mean score per prompt: overall, within condition (after subtracting condition means; "
            "the paper's Table 2 number) and the mean of per-condition correlations. Writes DIR/<kind>_sweep.json "
            "and one figure per vector."
        ),
    )
    add_model_options(sweep)
    sweep.add_argument("--trait", required=True, help="trait name or path to its JSON file")
    add_vector_arguments(sweep)
    add_layer_option(sweep)
    sweep.add_argument(
        "--kind", choices=["system", "many-shot", "both"], default="both", help="which sweep to run (default both)"
    )
    add_judge_options(sweep)
    sweep.add_argument("--no-coherence", action="store_true", help="do not score coherence (saves judge calls)")
    sweep.add_argument(
        "--questions",
        type=count_arg("--questions"),
        default=None,
        metavar="N",
        help="use the first N eval questions of the trait (default all 20)",
    )
    sweep.add_argument(
        "--shots",
        type=parse_int_list,
        default=[0, 5, 10, 15, 20],
        metavar="LIST",
        help="many-shot conditions: numbers of examples (default 0,5,10,15,20)",
    )
    add_generation_options(
        sweep,
        samples=1,
        max_new_tokens=128,
        temperature=1.0,
        top_p=1.0,
        seed=0,
        batch_size=8,
        helps={"batch_size": "prompts generated together"},
    )
    sweep.add_argument(
        "--out",
        type=out_path,
        default=None,
        metavar="DIR",
        help="output folder (default: runs/<model>/<trait>/monitor)",
    )
    add_control_arguments(sweep, default=100)
    sweep.add_argument("--json", action="store_true", help="print the summary as JSON")
    sweep.set_defaults(func=run_sweep)

    tokens = commands.add_parser(
        "tokens",
        help="generate replies and colour every token by its projection (HTML)",
        description="Generate a reply to each prompt while recording every token's projection on the unit vector "
        "at --layer, and write an HTML page with the text coloured by projection (red towards the trait, "
        "blue away, relative to the mean over prompt tokens).",
    )
    add_model_options(tokens)
    add_vector_arguments(tokens, trait_option=True)
    add_layer_option(tokens)
    _add_prompt_arguments(tokens)
    add_generation_options(tokens, max_new_tokens=64, temperature=0.0, seed=0)
    tokens.add_argument("--hide-prompt", action="store_true", help="show reply tokens only")
    tokens.add_argument(
        "--out",
        type=out_path,
        required=True,
        metavar="FILE.html",
        help="HTML page to write (one section per vector; a .json with the numbers beside it)",
    )
    tokens.add_argument("--json", action="store_true", help="print the projections as JSON")
    tokens.set_defaults(func=run_tokens)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------------------------------
# commands


def run_project(args: argparse.Namespace) -> int:
    from persona_lens.experiments.monitor import project_last_prompt, trait_names

    check_positive(batch_size=args.batch_size)
    prompts = _prompts_from_args(args)
    model, layer, vectors = load_model_layer_vectors(args, default_vector_paths(args, args.trait))
    projections = project_last_prompt(
        model, prompts, vectors, layer, batch_size=args.batch_size, allow_other_model=args.allow_other_model
    )
    names = trait_names(vectors)
    rows = [
        {"prompt": prompt, "projection": dict(zip(names, values))}
        for prompt, values in zip(prompts, projections.tolist())
    ]
    if args.json:
        print(
            json.dumps(
                {"model": model.cfg.model_name, "layer": layer, "traits": names, "prompts": rows},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print("\t".join([*names, "prompt"]))
        for row in rows:
            text = row["prompt"][-1]["content"].replace("\n", " ")
            print("\t".join([*(f"{row['projection'][n]:.4f}" for n in names), text[:80]]))
    return EXIT_OK


def _sweep_plans(args: argparse.Namespace, trait: Any) -> dict[str, Any]:
    from persona_lens.experiments.monitor import many_shot_prompts, system_prompt_prompts

    kinds = ["system", "many_shot"] if args.kind == "both" else [args.kind.replace("-", "_")]
    plans = {}
    try:
        if "system" in kinds:
            plans["system"] = system_prompt_prompts(trait, n_questions=args.questions)
        if "many_shot" in kinds:
            plans["many_shot"] = many_shot_prompts(trait, args.shots, n_questions=args.questions)
    except ValueError as error:
        hint = "; run --kind system alone" if args.kind == "both" and "many_shot" in str(error) else ""
        raise BadInput(f"{error}{hint}") from None
    return plans


def draw_sweep(result: Any, out: Path) -> list[Path]:
    """Write every figure of a monitoring sweep (fresh, or ``ProjectionSweepResult.load``-ed from ``out``)."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.projections import monitor_sweep_figures

    return [
        path
        for (name, kind), figure in monitor_sweep_figures(result).items()
        for path in write_figure(figure, out / f"{result.kind}_sweep_{slug(name)}{kind}.html")
    ]


def summarise_sweep(result: Any, data: list[Path], figures: list[Path]) -> dict[str, Any]:
    """The summary printed (``--json``) for one sweep, fresh or loaded."""
    from persona_lens.core.controls import baselines_to_dict

    return {
        "conditions": result.summary(),
        "correlations": {t: result.correlations(t) for t in result.traits},
        "baselines": baselines_to_dict(result.baselines),
        "controls": {**result.controls, "against": list(result.against)},
        "data": ", ".join(str(p) for p in data),
        "figures": [str(p) for p in figures],
    }


def _print_sweeps(report: dict[str, Any]) -> None:
    for kind, sweep in report["sweeps"].items():
        print(f"{kind} sweep of {report['trait']!r} at layer {report['layer']} (judge {report['judge']}):")
        names = report["traits"]
        print("  " + "\t".join(["condition", "score", "coherence", *(f"proj:{n}" for n in names)]))
        for row in sweep["conditions"]:
            print(
                "  "
                + "\t".join(
                    [
                        row["condition"],
                        _fmt(row["mean_score"]),
                        _fmt(row["mean_coherence"]),
                        *(_fmt(row["mean_projection"][n]) for n in names),
                    ]
                )
            )
        for name, corr in sweep["correlations"].items():
            print(
                f"  r({name}, score): overall {_fmt(corr['overall'])}, within condition "
                f"{_fmt(corr['within_condition'])}, mean per condition {_fmt(corr['mean_per_condition'])}"
            )
            for metric, baseline in sweep["baselines"][name].items():
                print(f"    {metric}: {baseline_line(baseline)}")
        print(f"  wrote {sweep['data']} and {', '.join(sweep['figures'])}")


def run_sweep(args: argparse.Namespace) -> int:
    from persona_lens.experiments.monitor import run_projection_sweep, trait_names

    check_positive(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    check_controls(args)
    if args.questions is not None:
        check_positive(questions=args.questions)
    trait = load_trait_arg(args.trait)
    plans = _sweep_plans(args, trait)
    check_judge_arg(args, trait)
    model, layer, vectors = load_model_layer_vectors(args, default_vector_paths(args, trait.name))
    against = load_vectors_arg(args.against, model, args.allow_other_model)
    judge, coherence_judge = judges_from_args(args, trait, model)
    out = args.out or default_run_dir(args.model, trait.name) / "monitor"
    lock_out(out)
    report: dict[str, Any] = {
        "model": model.cfg.model_name,
        "trait": trait.name,
        "layer": layer,
        "traits": trait_names(vectors),
        "judge": judge.judge_id,
        "sweeps": {},
    }
    for kind, prompts in plans.items():
        result = run_projection_sweep(
            model,
            prompts,
            vectors,
            layer,
            judge,
            trait.rubric,
            n_samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            kind=kind,
            coherence_judge=None if args.no_coherence else coherence_judge,
            allow_other_model=args.allow_other_model,
            controls=args.controls,
            control_seed=args.control_seed,
            against=against,
            progress=not args.json,
        )
        report["sweeps"][kind] = summarise_sweep(result, result.save(out), draw_sweep(result, out))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_sweeps(report)
    return EXIT_OK


def run_tokens(args: argparse.Namespace) -> int:
    from persona_lens.core.io import write_text_atomic
    from persona_lens.experiments.monitor import TokenProjections, generate_with_projections, trait_names
    from persona_lens.viz.projections import token_projection_page

    check_positive(max_new_tokens=args.max_new_tokens)
    check_out_file(args.out)
    prompts = _prompts_from_args(args)
    model, layer, vectors = load_model_layer_vectors(args, default_vector_paths(args, args.trait))
    traces = generate_with_projections(
        model,
        prompts,
        vectors,
        layer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        allow_other_model=args.allow_other_model,
    )
    out = args.out if args.out.suffix == ".html" else args.out.with_suffix(".html")
    result = TokenProjections(model.cfg.model_name, layer, trait_names(vectors), traces, out)
    result.save()
    write_text_atomic(out, token_projection_page(result, show_prompt=not args.hide_prompt))
    numbers = result.to_json()
    if args.json:
        print(json.dumps(numbers, indent=2, ensure_ascii=False))
    else:
        for trace in traces:
            last = trace.projections[:, trace.prompt_length - 1].tolist()
            print(
                f"{trace.response[:70]!r}: last prompt token "
                + ", ".join(f"{n} {v:.3f}" for n, v in zip(result.traits, last))
            )
        print(f"wrote {out}")
    return EXIT_OK
