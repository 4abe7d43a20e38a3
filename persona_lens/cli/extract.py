"""``python -m persona_lens extract TRAIT``: extract a persona vector (resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput
from persona_lens.cli.options import (
    add_judge_options,
    add_model_options,
    default_run_dir,
    judges_from_args,
    load_model_arg,
    load_trait_arg,
)
from persona_lens.cli.scale import add_scale_options, executor_from_args

__all__ = ["configure_parser", "run", "add_extract_options", "extract_config_from_args", "run_extraction"]


def add_extract_options(parser: argparse.ArgumentParser, *, prefix: str = "", samples: int = 10,
                        max_new_tokens: int = 256) -> None:
    p = prefix
    parser.add_argument(f"--{p}samples", type=int, default=samples,
                        help=f"replies per question and system prompt, each polarity (paper: 10; default {samples})")
    parser.add_argument(f"--{p}questions", type=int, default=None, help="use only the first N extraction questions")
    parser.add_argument(f"--{p}pairs", type=int, default=None, help="use only the first N system-prompt pairs")
    parser.add_argument(f"--{p}max-new-tokens", type=int, default=max_new_tokens,
                        help=f"reply length limit (paper: 1000; default {max_new_tokens})")
    parser.add_argument(f"--{p}temperature", type=float, default=1.0, help="sampling temperature (paper: 1.0)")
    parser.add_argument("--trait-threshold", type=float, default=50.0,
                        help="keep pairs whose positive reply scores >= this and negative < this (default 50)")
    parser.add_argument("--extract-coherence-threshold", type=float, default=50.0,
                        help="both replies of a kept pair need coherence >= this (default 50)")


def extract_config_from_args(args: argparse.Namespace, *, prefix: str = "") -> Any:
    from persona_lens.experiments.extract import ExtractConfig

    p = prefix.replace("-", "_")
    return ExtractConfig(n_samples=getattr(args, f"{p}samples"), n_questions=getattr(args, f"{p}questions"),
                         n_pairs=getattr(args, f"{p}pairs"), max_new_tokens=getattr(args, f"{p}max_new_tokens"),
                         temperature=getattr(args, f"{p}temperature"), seed=args.seed, batch_size=args.batch_size,
                         trait_threshold=args.trait_threshold,
                         coherence_threshold=args.extract_coherence_threshold)


def run_extraction(model: Any, trait: Any, args: argparse.Namespace, out_dir: Path, config: Any) -> Any:
    from persona_lens.experiments.extract import extract

    judge, coherence = judges_from_args(args, trait, model)
    try:
        return extract(model, trait, judge=judge, coherence_judge=coherence, config=config, out_dir=out_dir,
                       progress=not args.quiet, executor=executor_from_args(args))
    except ValueError as error:
        raise BadInput(str(error)) from error


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "extract", help="extract a persona vector from a trait",
        description="Generate replies under the trait's positive and negative system prompts, judge them, keep the "
                    "pairs that pass the filters, and save the mean difference of residual activations at every "
                    "layer (response-mean, prompt-mean and last-prompt-token vectors). Resumable: rerun the same "
                    "command to continue an interrupted run; a finished run costs nothing.")
    parser.add_argument("trait", help="trait name (see `python -m persona_lens traits list`) or a trait JSON file")
    add_model_options(parser)
    add_judge_options(parser)
    add_extract_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: runs/<model>/<trait>/extract)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_scale_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from persona_lens.experiments.extract import vector_path

    trait = load_trait_arg(args.trait)
    out_dir = args.out or default_run_dir(args.model, trait.name) / "extract"
    model = load_model_arg(args)
    result = run_extraction(model, trait, args, out_dir, extract_config_from_args(args))
    if args.json:
        print(json.dumps({**result.report, "vector": str(vector_path(out_dir))}, indent=2))
    else:
        report = result.report
        best = max(report["per_layer"][1:], key=lambda row: row["auroc"])
        print(f"kept {report['kept']} of {report['pairs']} pairs; dropped: {report['dropped'] or 'none'}")
        print(f"best-separating layer (in-sample AUROC): {best['layer']} ({best['auroc']:.3f})")
        print(f"vector: {vector_path(out_dir)}")
        print(f"report: {out_dir / 'report.md'}")
    return 0
