"""``python -m persona_lens screen``: rank the samples of chat datasets by their projection difference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_OK, BadInput
from persona_lens.cli.controls import add_control_arguments, baseline_line, check_controls
from persona_lens.cli.options import (
    add_generation_options,
    add_layer_option,
    add_model_options,
    add_vector_arguments,
    count_arg,
    default_vector_paths,
    load_model_layer_vectors,
    load_vectors_arg,
    lock_out,
    out_path,
    slug,
)
from persona_lens.cli.scale import add_scale_options, announce_engine, check_scale_args, executor_from_args

__all__ = ["configure_parser", "run"]

DESCRIPTION = (
    "Data screening (paper section 7). For each sample (prompt x, response y) of a chat JSONL file: generate the base "
    "model's own response y' (batched, cached on disk), and compute the projection difference dP = [a(x,y) - a(x,y')] "
    ". v (a = mean residual stream over response tokens at --layer, v = unit persona vector), and the cheap variant "
    "dP_last = [a(x,y) - a(x)] . v with the last prompt token instead of y'. Streams the file in chunks (memory does "
    "not grow with its size), appends results as it goes and resumes after an interruption (rerun the same "
    "command). Bad records (invalid JSON, missing roles, empty text, prompts over --max-tokens) are reported with "
    "their line numbers. Writes per dataset: <name>.scores.jsonl, samples ranked by dP (<name>.ranked.<trait>.jsonl "
    "and .csv) and a histogram; with several datasets, overlaid histograms and the AUROC of dP for telling each "
    "dataset from the first. Controls in the same run: every number is reported beside K seeded random directions "
    "(--controls), the other vectors (--vector, --against) and the flipped vector."
)


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "screen",
        help="rank dataset samples by projection difference (dP) before finetuning on them",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "data",
        nargs="+",
        type=Path,
        metavar="DATA.jsonl",
        help='chat datasets, one {"messages": [...]} conversation a line (last message from the assistant)',
    )
    add_model_options(parser)
    add_vector_arguments(parser, trait_option=True)
    add_layer_option(parser)
    parser.add_argument("--out", type=out_path, required=True, metavar="DIR", help="output folder")
    add_generation_options(
        parser,
        max_new_tokens=256,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        batch_size=8,
        helps={
            "max_new_tokens": "base response length limit",
            "temperature": "base response sampling temperature (0: greedy, independent of batching)",
            "batch_size": "conversations per forward / generation batch",
        },
    )
    parser.add_argument(
        "--chunk-size",
        type=count_arg("--chunk-size"),
        default=64,
        help="records read, scored and appended at a time (bounds memory; default 64)",
    )
    parser.add_argument(
        "--max-tokens",
        type=count_arg("--max-tokens"),
        default=2048,
        help="a record whose prompt or conversation is longer than this many tokens is reported as bad (default 2048)",
    )
    parser.add_argument(
        "--limit", type=count_arg("--limit"), default=None, metavar="N", help="screen only the first N records"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="PATH.sqlite",
        help="base-response cache, shareable across datasets and runs (default: DIR/base_responses.sqlite)",
    )
    parser.add_argument(
        "--rank-by", choices=["dp", "dp_last_prompt"], default="dp", help="score used for ranking (default dp)"
    )
    parser.add_argument(
        "--top",
        type=count_arg("--top"),
        default=None,
        metavar="K",
        help="export only the K highest-ranked samples (default: all)",
    )
    parser.add_argument("--bins", type=count_arg("--bins"), default=50, help="histogram bins (default 50)")
    add_control_arguments(
        parser, default=100, cost="one matmul on the activations already read, and K numbers a row in the scores file"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_scale_options(parser)
    parser.set_defaults(func=run)


def _names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name = slug(path.stem)
        while name in names:
            name = slug(f"{path.parent.name}_{name}")
            if name in names:
                name = f"{name}_{len(names)}"
        names.append(name)
    return names


def _fmt(value: Any) -> str:
    from persona_lens.core.formatting import format_value

    return format_value(value, "+.4f")


def draw(result: Any, out: Path, bins: int = 50) -> list[Path]:
    """Write every figure of a screen (fresh, or ``ScreenResult.load``-ed from ``out``) into ``out``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.projections import screen_figures

    return [
        path
        for name, figure in screen_figures(result, out, bins=bins).items()
        for path in write_figure(figure, out / name)
    ]


def _print(report: dict[str, Any], out: Path) -> None:
    for name, summary in report["datasets"].items():
        print(
            f"{name}: {summary['n_ok']} screened, {summary['n_bad']} bad records, "
            f"{summary['base_responses_generated']} base responses generated, "
            f"{summary['base_responses_cached']} from the cache"
        )
        for trait in summary["traits"]:
            print(
                f"  {trait}: mean dP {_fmt(summary['mean_dp'][trait])}, mean dP(last prompt token) "
                f"{_fmt(summary['mean_dp_last_prompt'][trait])} over {summary['n_scored'][trait]} samples"
            )
            for record in summary["baselines"].get(trait, {}).values():
                print(f"    {baseline_line(record)}")
        for problem in summary["problems"][:20]:
            print(f"  line {problem['line']}: {problem['problem']}")
        if len(summary["problems"]) > 20 or summary["n_bad"] > 20:
            print(f"  ... problem counts: {summary['problem_counts']}")
    for trait, comparison in report["comparison"].items():
        for key in ("dp", "dp_last_prompt"):
            for name, value in comparison[f"auroc_{key}"].items():
                print(
                    f"AUROC of {key} on {trait}, {name} vs {comparison['reference']}: "
                    f"{'n/a' if value is None else f'{value:.3f}'}"
                )
                for record in comparison[f"baselines_{key}"][name].values():
                    print(f"    {baseline_line(record)}")
    print(f"wrote {out / 'screen_report.json'} and the files listed there")


def run(args: argparse.Namespace) -> int:
    from persona_lens.experiments.screen import ScreenConfig
    from persona_lens.experiments.screen_result import screen_datasets

    check_scale_args(args)
    announce_engine(args, "screen")
    for path in args.data:
        if not path.is_file():
            raise BadInput(f"no dataset at {path}")
    lock_out(args.out)
    if args.top is not None and args.top < 1:
        raise BadInput("--top must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise BadInput("--limit must be >= 1")
    check_controls(args)
    model, layer, vectors = load_model_layer_vectors(args, default_vector_paths(args, args.trait))
    vectors += load_vectors_arg(args.against, model, args.allow_other_model)  # screened too: cross-trait controls
    try:
        config = ScreenConfig(
            layer=layer,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            max_tokens=args.max_tokens,
            controls=args.controls,
            control_seed=args.control_seed,
        )
        result = screen_datasets(
            model,
            dict(zip(_names(list(args.data)), args.data)),
            vectors,
            args.out,
            config,
            cache_path=args.cache or args.out / "base_responses.sqlite",
            limit=args.limit,
            rank_by=args.rank_by,
            top=args.top,
            allow_other_model=args.allow_other_model,
            progress=not (args.quiet or args.json),
            executor=executor_from_args(args),
        )
    except ValueError as error:  # bad settings, or settings of an earlier run differ
        raise BadInput(str(error)) from None
    draw(result, args.out, args.bins)
    result.save(args.out)
    report = result.to_json(args.out)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print(report, args.out)
    return EXIT_OK
