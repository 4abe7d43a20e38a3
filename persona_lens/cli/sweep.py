"""``python -m persona_lens.sweep`` (also ``python -m persona_lens sweep``): steer each layer x coefficient.

With no arguments it runs the embedded default on CPU: SmolLM2-135M-Instruct, the ``enthusiastic`` trait (its rule judge, the offline coherence judge);
it extracts the vector first when there is none, and prints where its figure and table are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_BAD_INPUT, BadInput, parse_args, run_command
from persona_lens.cli.controls import add_control_arguments, baseline_line, check_controls
from persona_lens.cli.extract import (
    add_extract_options,
    calibration_path,
    extract_config_from_args,
    extract_dir,
    run_extraction,
)
from persona_lens.cli.options import (
    add_generation_options,
    add_judge_options,
    add_model_options,
    add_vector_arguments,
    check_judge_arg,
    count_arg,
    default_run_dir,
    extracted_vectors,
    judges_from_args,
    load_model_arg,
    load_trait_arg,
    load_vectors_arg,
    lock_out,
    out_path,
    parse_float_list,
    parse_int_list,
    threshold_arg,
)
from persona_lens.cli.scale import add_scale_options, announce_engine, check_scale_args, executor_from_args

__all__ = ["configure_parser", "build_parser", "run", "main", "write_sweep_figure"]

DEFAULT_TRAIT = "enthusiastic"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trait",
        default=DEFAULT_TRAIT,
        help=f"trait name or JSON file (default: {DEFAULT_TRAIT}, measurable by a rule offline)",
    )
    add_model_options(parser)
    add_vector_arguments(
        parser,
        vector_help="a saved persona vector (.safetensors); default: the vector extracted "
        "into the run folder (--out, default runs/<model>/<trait>: its extract-* folder), extracted "
        "first (with the --extract-* settings) if there is none",
    )
    parser.add_argument(
        "--layers",
        type=parse_int_list,
        default=None,
        help="layers to steer, e.g. 4,8,12 or 6-14 (l = output of block l, as HF hidden_states[l]); "
        "default: 3 layers spread over the middle",
    )
    parser.add_argument(
        "--coefficients",
        type=parse_float_list,
        default=None,
        help="coefficients, e.g. 0.1,0.2,0.4 (default relative: 0.1,0.2,0.3,0.4; negative values subtract the vector)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="coefficients in the paper's raw units (h + a v) instead of relative to the layer's "
        "median residual norm (a |v| / median |h|)",
    )
    add_generation_options(
        parser,
        samples=1,
        max_new_tokens=40,
        temperature=1.0,
        seed=0,
        batch_size=64,
        helps={"samples": "replies per evaluation question and cell"},
    )
    parser.add_argument(
        "--questions", type=count_arg("--questions"), default=None, help="use only the first N evaluation questions"
    )
    parser.add_argument(
        "--positions",
        default="response",
        choices=["all", "prompt", "response"],
        help="where to steer: every position, the prompt only, or the last prompt token and every "
        "generated token (the paper's default; default: response)",
    )
    parser.add_argument(
        "--condition",
        default="none",
        choices=["none", "positive", "negative"],
        help="system prompt of the evaluation replies: none, or the trait's positive/negative prompts "
        "(use positive with negative coefficients to test mitigation)",
    )
    parser.add_argument(
        "--coherence-threshold",
        type=threshold_arg("--coherence-threshold"),
        default=75.0,
        help="a reply is coherent at coherence >= this; the chosen cell has the highest share of "
        "replies that are both trait-expressing (--trait-threshold) and coherent (default 75)",
    )
    add_judge_options(parser)
    add_extract_options(parser, prefix="extract-", samples=1, max_new_tokens=40)
    parser.add_argument("--out", type=out_path, default=None, help="run folder (default: runs/<model>/<trait>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_control_arguments(
        parser,
        default=3,
        cost="one more cell of generation at the chosen cell (the vector "
        "and the flipped vector are generated there too)",
    )


DESCRIPTION = (
    "Steer with a persona vector at each layer and coefficient, generate on the trait's evaluation "
    "questions, judge trait and coherence, write a CSV table and layer-wise steering curves, and pick the "
    "layer. Resumable. With no arguments: SmolLM2-135M-Instruct, trait 'enthusiastic', rule + offline judges, on CPU."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m persona_lens.sweep", description=DESCRIPTION)
    _add_arguments(parser)
    add_scale_options(parser)  # the same options as `python -m persona_lens sweep` (--engine, --ray, ...)
    return parser


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep", help="sweep layers x coefficients and pick the layer", description=DESCRIPTION
    )
    _add_arguments(parser)
    add_scale_options(parser)
    parser.set_defaults(func=run)


def _vector_path(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """``--vector``, else the one vector extracted into the run folder (None: there is none yet, extract first)."""
    if args.vectors:
        if len(args.vectors) > 1:
            raise BadInput("sweep steers with one vector; give --vector once")
        return args.vectors[0]
    found = extracted_vectors(run_dir)
    if len(found) > 1:
        raise BadInput(
            f"several vectors were extracted into {run_dir} (other settings): "
            f"{', '.join(map(str, found))}; choose one with --vector"
        )
    return found[0] if found else None


def _vector(args: argparse.Namespace, model: Any, trait: Any, run_dir: Path, path: Path | None) -> Any:
    from persona_lens.experiments.extract import vector_path

    if path is None:
        config = extract_config_from_args(args, prefix="extract-")
        out = extract_dir(run_dir, config)
        print(f"no vector extracted for {trait.name!r} yet: extracting it first into {out}", file=sys.stderr)
        run_extraction(model, trait, args, out, config)
        path = vector_path(out)
    if not path.exists():
        raise BadInput(f"no vector file {path}")
    return load_vectors_arg([path], model, allow_other_model=args.allow_other_model)[0]


def run(args: argparse.Namespace) -> int:
    from persona_lens.experiments.steering_sweep import SteeringSweepConfig, run_steering_sweep

    started = time.time()
    check_controls(args)
    check_scale_args(args)
    announce_engine(args, "sweep")
    trait = load_trait_arg(args.trait)
    if args.questions is not None and args.questions > len(trait.eval_questions):
        print(
            f"note: --questions {args.questions}: {trait.name!r} has {len(trait.eval_questions)} evaluation "
            f"questions; every one is used ({len(trait.eval_questions)}, not {args.questions})",
            file=sys.stderr,
        )
    run_dir = args.out or default_run_dir(args.model, trait.name)
    check_judge_arg(args, trait)
    lock_out(run_dir)
    path = _vector_path(args, run_dir)
    model = load_model_arg(args)
    vector = _vector(args, model, trait, run_dir, path)
    config = SteeringSweepConfig(
        layers=args.layers,
        coefficient_mode="raw" if args.raw else "relative",
        n_samples=args.samples,
        n_questions=args.questions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        positions=args.positions,
        condition=args.condition,
        trait_threshold=args.trait_threshold,
        coherence_threshold=args.coherence_threshold,
        batch_size=args.batch_size,
    )
    if args.coefficients is not None:
        config.coefficients = args.coefficients
    judge, coherence = judges_from_args(args, trait, model, calibration=calibration_path(run_dir))
    try:
        result = run_steering_sweep(
            model,
            vector,
            trait,
            judge=judge,
            coherence_judge=coherence,
            config=config,
            out_dir=run_dir / f"sweep-{args.condition}-{args.positions}",
            progress=not args.quiet,
            executor=executor_from_args(args),
        )
    except ValueError as error:
        raise BadInput(str(error)) from error
    controls = run_sweep_controls(args, model, vector, trait, result, judge, coherence)
    draw(result, controls)
    if args.json:
        print(
            json.dumps(
                {
                    "chosen": None if result.chosen is None else vars(result.chosen),
                    "reason": result.reason,
                    "baseline": vars(result.baseline),
                    "prompted": None if result.prompted is None else vars(result.prompted),
                    "paths": {k: str(v) for k, v in result.paths.items()},
                    "controls": None if controls is None else controls.to_json(),
                    "seconds": round(time.time() - started, 1),
                },
                indent=2,
            )
        )
        return 0
    from persona_lens.core.formatting import format_value as fv

    base = result.baseline
    print(
        f"baseline (unsteered): trait {fv(base.trait_mean, '.1f')}, rate {fv(base.trait_rate)}, "
        f"coherence {fv(base.coherence_mean, '.1f')}, both {fv(base.both_rate)}"
        + (f" ({base.n_unscored} of {base.n} replies unscored)" if base.n_unscored else "")
    )
    if result.prompted is not None:
        p = result.prompted
        print(
            f"system-prompted (the anchor, unsteered): trait {fv(p.trait_mean, '.1f')}, rate {fv(p.trait_rate)}, "
            f"coherence {fv(p.coherence_mean, '.1f')}, both {fv(p.both_rate)}"
        )
    print(("chosen: " if result.chosen else "no choice: ") + result.reason)
    print(f"figure: {result.paths.get('html')}" + (f" and {result.paths['png']}" if "png" in result.paths else ""))
    print(f"table:  {result.paths['csv']}")
    print(f"replies: {result.paths['samples']}")
    if controls is not None:
        print(f"controls at the chosen cell (layer {controls.layer}, coefficient {controls.coef_relative:g} relative):")
        for baseline in controls.baselines.values():
            print(f"  {baseline_line(baseline)}")
        print(f"  figure: {controls.paths['html']}")
    elif args.controls or args.against:
        print("controls: skipped (no chosen cell)")
    print(f"done in {time.time() - started:.0f} s")
    return 0


def run_sweep_controls(
    args: argparse.Namespace, model: Any, vector: Any, trait: Any, result: Any, judge: Any, coherence: Any
) -> Any:
    """Steer the chosen cell with --controls random vectors, the flipped vector and the --against vectors; writes
    controls.json beside the sweep (None when there is no chosen cell or no control asked)."""
    from persona_lens.experiments.steering_sweep import run_steering_controls

    if result.chosen is None or not (args.controls or args.against):
        return None
    against = load_vectors_arg(args.against, model, allow_other_model=args.allow_other_model)
    try:
        return run_steering_controls(
            model,
            vector,
            trait,
            result.chosen,
            judge=judge,
            coherence_judge=coherence,
            config=result.config,
            out_dir=result.out_dir,
            controls=args.controls,
            control_seed=args.control_seed,
            against=against,
            progress=not args.quiet,
            executor=executor_from_args(args),
        )
    except ValueError as error:
        raise BadInput(str(error)) from error


def draw(result: Any, controls: Any = None) -> list[Path]:
    """Write every figure of a sweep (fresh, or loaded with ``SteeringSweepResult.load``) into its folder:
    ``sweep.html`` (and ``sweep.png`` where a browser can render it), and ``controls.html`` with ``controls``;
    adds them to ``result.paths`` (``html``, ``png``) and ``controls.paths``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.steering import sweep_figures

    written = []
    for name, figure in sweep_figures(result, controls).items():
        paths = write_figure(figure, result.out_dir / name)
        owner = result.paths if name == "sweep.html" else controls.paths
        owner.update({path.suffix.lstrip("."): path for path in paths})
        written += paths
    return written


def write_sweep_figure(result: Any) -> list[Path]:
    """Draw the steering curves of a sweep result into ``sweep.html`` beside its table (see :func:`draw`)."""
    return draw(result)


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = parse_args(build_parser(), argv)
    return EXIT_BAD_INPUT if args is None else run_command(run, args)
