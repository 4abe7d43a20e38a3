"""``python -m persona_lens.sweep`` (also ``python -m persona_lens sweep``): steer each layer x coefficient.

With no arguments it runs the embedded default on CPU: SmolLM2-135M-Instruct, the ``pirate`` trait, rule judges;
it extracts the vector first when there is none, and prints where its figure and table are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput, run_command
from persona_lens.cli.extract import add_extract_options, extract_config_from_args, run_extraction
from persona_lens.cli.options import (
    add_judge_options,
    add_model_options,
    default_run_dir,
    judges_from_args,
    load_model_arg,
    load_trait_arg,
    load_vectors_arg,
    parse_float_list,
    parse_int_list,
)
from persona_lens.cli.scale import add_scale_options, executor_from_args

__all__ = ["configure_parser", "build_parser", "run", "main", "write_sweep_figure"]

DEFAULT_TRAIT = "pirate"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trait", default=DEFAULT_TRAIT,
                        help=f"trait name or JSON file (default: {DEFAULT_TRAIT}, measurable by a rule offline)")
    add_model_options(parser)
    parser.add_argument("--vector", type=Path, default=None,
                        help="a saved persona vector (.safetensors); default: the run folder's extracted vector, "
                             "extracted first if missing")
    parser.add_argument("--allow-other-model", action="store_true",
                        help="steer with a vector extracted from another model of the same shape (e.g. base -> "
                             "finetuned)")
    parser.add_argument("--layers", type=parse_int_list, default=None,
                        help="layers to steer, e.g. 4,8,12 or 6-14 (l = output of block l, as HF hidden_states[l]); "
                             "default: 5 layers spread over the middle")
    parser.add_argument("--coefficients", type=parse_float_list, default=None,
                        help="coefficients, e.g. 0.1,0.2,0.4 (default relative: 0.1,0.2,0.3,0.4,0.5,0.7; "
                             "negative values subtract the vector)")
    parser.add_argument("--raw", action="store_true",
                        help="coefficients in the paper's raw units (h + a v) instead of relative to the layer's "
                             "median residual norm (a |v| / median |h|)")
    parser.add_argument("--samples", type=int, default=1, help="replies per evaluation question and cell (default 1)")
    parser.add_argument("--questions", type=int, default=None, help="use only the first N evaluation questions")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="reply length limit (default 40)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--positions", default="response", choices=["all", "prompt", "response"],
                        help="where to steer: every position, the prompt only, or the last prompt token and every "
                             "generated token (the paper's default; default: response)")
    parser.add_argument("--condition", default="none", choices=["none", "positive", "negative"],
                        help="system prompt of the evaluation replies: none, or the trait's positive/negative prompts "
                             "(use positive with negative coefficients to test mitigation)")
    parser.add_argument("--coherence-threshold", type=float, default=75.0,
                        help="the chosen cell needs mean coherence >= this (default 75)")
    add_judge_options(parser)
    add_extract_options(parser, prefix="extract-", samples=1, max_new_tokens=40)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="generation batch size (default 64)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<model>/<trait>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


DESCRIPTION = ("Steer with a persona vector at each layer and coefficient, generate on the trait's evaluation "
               "questions, judge trait and coherence, write a CSV table and layer-wise steering curves, and pick the "
               "layer. Resumable. With no arguments: SmolLM2-135M-Instruct, trait 'pirate', rule judges, on CPU.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m persona_lens.sweep", description=DESCRIPTION)
    _add_arguments(parser)
    return parser


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("sweep", help="sweep layers x coefficients and pick the layer",
                                   description=DESCRIPTION)
    _add_arguments(parser)
    add_scale_options(parser)
    parser.set_defaults(func=run)


def _vector(args: argparse.Namespace, model: Any, trait: Any, run_dir: Path) -> Any:
    from persona_lens.experiments.extract import vector_path

    path = args.vector or vector_path(run_dir / "extract")
    if args.vector is None and not path.exists():
        print(f"no vector at {path}: extracting it first", file=sys.stderr)
        run_extraction(model, trait, args, run_dir / "extract", extract_config_from_args(args, prefix="extract-"))
    if not path.exists():
        raise BadInput(f"no vector file {path}")
    return load_vectors_arg([path], model, allow_other_model=args.allow_other_model)[0]


def run(args: argparse.Namespace) -> int:
    from persona_lens.experiments.steering_sweep import SteeringSweepConfig, run_steering_sweep

    started = time.time()
    trait = load_trait_arg(args.trait)
    run_dir = args.out or default_run_dir(args.model, trait.name)
    model = load_model_arg(args)
    vector = _vector(args, model, trait, run_dir)
    config = SteeringSweepConfig(layers=args.layers, coefficient_mode="raw" if args.raw else "relative",
                                 n_samples=args.samples, n_questions=args.questions,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                                 positions=args.positions, condition=args.condition,
                                 trait_threshold=args.trait_threshold,
                                 coherence_threshold=args.coherence_threshold, batch_size=args.batch_size)
    if args.coefficients is not None:
        config.coefficients = args.coefficients
    judge, coherence = judges_from_args(args, trait, model)
    try:
        result = run_steering_sweep(model, vector, trait, judge=judge, coherence_judge=coherence, config=config,
                                    out_dir=run_dir / f"sweep-{args.condition}-{args.positions}",
                                    progress=not args.quiet, executor=executor_from_args(args))
    except ValueError as error:
        raise BadInput(str(error)) from error
    write_sweep_figure(result)
    if args.json:
        print(json.dumps({"chosen": None if result.chosen is None else vars(result.chosen), "reason": result.reason,
                          "baseline": vars(result.baseline), "paths": {k: str(v) for k, v in result.paths.items()},
                          "seconds": round(time.time() - started, 1)}, indent=2))
        return 0
    print(f"baseline (unsteered): trait {result.baseline.trait_mean:.1f}, rate {result.baseline.trait_rate:.2f}, "
          f"coherence {result.baseline.coherence_mean:.1f}")
    print(("chosen: " if result.chosen else "no choice: ") + result.reason)
    print(f"figure: {result.paths.get('html')}" + (f" and {result.paths['png']}" if "png" in result.paths else ""))
    print(f"table:  {result.paths['csv']}")
    print(f"done in {time.time() - started:.0f} s")
    return 0


def write_sweep_figure(result: Any) -> list[Path]:
    """Draw the steering curves of a :class:`~persona_lens.experiments.steering_sweep.SteeringSweepResult` into
    ``sweep.html`` (and ``sweep.png`` where a browser can render it) beside its table; adds them to ``result.paths``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.steering import plot_steering_curves

    config = result.config
    figure = plot_steering_curves(result.cells, result.baseline, chosen=result.chosen,
                                  title=f"Steering {result.model_name} with the {result.trait!r} vector "
                                        f"({config.positions} positions)",
                                  x=config.coefficient_mode, coherence_threshold=config.coherence_threshold)
    written = write_figure(figure, result.out_dir / "sweep.html")
    for path in written:
        result.paths[path.suffix.lstrip(".")] = path
    return written


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_command(run, build_parser().parse_args(argv))
