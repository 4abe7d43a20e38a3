"""``python -m persona_lens extract TRAIT``: extract a persona vector (resumable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput
from persona_lens.cli.controls import add_control_arguments, check_controls
from persona_lens.cli.options import (
    add_generation_options,
    add_judge_options,
    add_model_options,
    check_judge_arg,
    count_arg,
    default_run_dir,
    judges_from_args,
    load_model_arg,
    load_trait_arg,
    load_vectors_arg,
    lock_out,
    out_path,
    threshold_arg,
)
from persona_lens.cli.scale import add_scale_options, announce_engine, check_scale_args, executor_from_args

__all__ = [
    "configure_parser",
    "run",
    "add_extract_options",
    "extract_config_from_args",
    "run_extraction",
    "calibration_path",
    "extract_dir",
]


def calibration_path(run_dir: Path) -> Path:
    """Where a run folder keeps the likelihood coherence judge's calibration (shared by extract and sweep)."""
    return Path(run_dir) / "coherence_calibration.json"


def add_extract_options(
    parser: argparse.ArgumentParser, *, prefix: str = "", samples: int = 10, max_new_tokens: int = 256
) -> None:
    """The extraction settings (``--{prefix}samples`` ...); the extraction shares the command's ``--seed`` and
    ``--batch-size``."""
    p = prefix
    add_generation_options(
        parser,
        prefix=p,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        helps={
            "samples": "replies per question and system prompt, each polarity (paper: 10)",
            "max_new_tokens": "reply length limit (paper: 1000)",
            "temperature": "sampling temperature (paper: 1.0)",
        },
    )
    parser.add_argument(
        f"--{p}questions",
        type=count_arg(f"--{p}questions"),
        default=None,
        help="use only the first N extraction questions",
    )
    parser.add_argument(
        f"--{p}pairs", type=count_arg(f"--{p}pairs"), default=None, help="use only the first N system-prompt pairs"
    )
    parser.add_argument(
        "--trait-threshold",
        type=threshold_arg("--trait-threshold"),
        default=50.0,
        help="keep pairs whose positive reply scores >= this and negative < this (default 50)",
    )
    parser.add_argument(
        "--extract-coherence-threshold",
        type=threshold_arg("--extract-coherence-threshold"),
        default=50.0,
        help="both replies of a kept pair need coherence >= this (default 50)",
    )


def extract_config_from_args(args: argparse.Namespace, *, prefix: str = "") -> Any:
    from persona_lens.experiments.extract import ExtractConfig

    p = prefix.replace("-", "_")
    return ExtractConfig(
        n_samples=getattr(args, f"{p}samples"),
        n_questions=getattr(args, f"{p}questions"),
        n_pairs=getattr(args, f"{p}pairs"),
        max_new_tokens=getattr(args, f"{p}max_new_tokens"),
        temperature=getattr(args, f"{p}temperature"),
        seed=args.seed,
        batch_size=args.batch_size,
        trait_threshold=args.trait_threshold,
        coherence_threshold=args.extract_coherence_threshold,
    )


def extract_dir(run_dir: Path, config: Any) -> Path:
    """The default extraction folder of a run folder: one per reply-changing setting (length, temperature, top-p,
    seed), so extractions made with other settings (the sweep's quick one, ``extract``'s default) never collide."""
    return run_dir / (f"extract-t{config.max_new_tokens}-T{config.temperature:g}-p{config.top_p:g}-s{config.seed}")


def run_extraction(model: Any, trait: Any, args: argparse.Namespace, out_dir: Path, config: Any) -> Any:
    from persona_lens.experiments.extract import extract

    lock_out(out_dir)
    judge, coherence = judges_from_args(args, trait, model, calibration=calibration_path(out_dir.parent))
    try:
        return extract(
            model,
            trait,
            judge=judge,
            coherence_judge=coherence,
            config=config,
            out_dir=out_dir,
            progress=not args.quiet,
            executor=executor_from_args(args),
        )
    except ValueError as error:
        raise BadInput(str(error)) from error


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract a persona vector from a trait",
        description="Generate replies under the trait's positive and negative system prompts, judge them, keep the "
        "pairs that pass the filters, and save the mean difference of residual activations at every "
        "layer (response-mean, prompt-mean and last-prompt-token vectors). Resumable: rerun the same "
        "command to continue an interrupted run; a finished run costs nothing.",
    )
    parser.add_argument("trait", help="trait name (see `python -m persona_lens traits list`) or a trait JSON file")
    add_model_options(parser)
    add_judge_options(parser)
    add_extract_options(parser)
    add_generation_options(parser, seed=0, batch_size=32)
    parser.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="output folder (default: runs/<model>/<trait>/extract-t<max tokens>-T<temperature>-"
        "p<top-p>-s<seed>, one per setting)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_control_arguments(parser, default=100, cost="a dot product")
    add_scale_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from persona_lens.experiments.extract import vector_path

    check_controls(args)
    check_scale_args(args)
    announce_engine(args, "extract")
    trait = load_trait_arg(args.trait)
    check_judge_arg(args, trait)
    config = extract_config_from_args(args)
    out_dir = args.out or extract_dir(default_run_dir(args.model, trait.name), config)
    lock_out(out_dir)
    model = load_model_arg(args)
    against = load_vectors_arg(args.against, model, allow_other_model=True)
    result = run_extraction(model, trait, args, out_dir, config)
    cosines = (
        write_cosines(
            result.vectors["response"], against, out_dir, controls=args.controls, control_seed=args.control_seed
        )
        if against
        else None
    )
    if args.json:
        extra = {} if cosines is None else {"cosines": cosines}
        print(json.dumps({**result.report, "vector": str(vector_path(out_dir)), **extra}, indent=2))
    else:
        report = result.report
        best = max(report["per_layer"][1:], key=lambda row: row["auroc"])
        print(f"kept {report['kept']} of {report['pairs']} pairs; dropped: {report['dropped'] or 'none'}")
        print(f"best-separating layer (in-sample AUROC): {best['layer']} ({best['auroc']:.3f})")
        print(f"vector: {vector_path(out_dir)}")
        print(f"report: {out_dir / 'report.md'}")
        if cosines is not None:
            print(
                f"cosines with the other traits' vectors: {out_dir / 'cosines.md'} (table), "
                f"{', '.join(cosines['files'])}"
            )
            print(cosines["table"], end="")
    return 0


def write_cosines(
    vector: Any, against: list[Any], out_dir: Path, *, controls: int, control_seed: int
) -> dict[str, Any]:
    """The cosine matrix of ``vector`` and the ``against`` vectors per layer: cosines.json, cosines.md, figure."""
    from persona_lens.experiments.extract import format_cosines, trait_cosines

    try:
        cosines = trait_cosines([vector, *against], controls=controls, control_seed=control_seed)
    except ValueError as error:
        raise BadInput(f"--against: {error}") from None
    files = [*cosines.save(out_dir), *draw_cosines(cosines, out_dir)]
    return {**cosines.to_json(), "table": format_cosines(cosines), "files": [str(path) for path in files]}


def draw_cosines(cosines: Any, out_dir: Path) -> list[Path]:
    """Write the cosine figure of ``cosines`` (fresh, or ``TraitCosines.load``-ed from ``out_dir``) into ``out_dir``."""
    from persona_lens.viz.controls import cosines_figures
    from persona_lens.viz.figures import write_figure

    return [path for name, figure in cosines_figures(cosines).items() for path in write_figure(figure, out_dir / name)]
