"""``python -m persona_lens shift``: finetuning shift of finetuned models along persona vectors, vs trait score."""

from __future__ import annotations

import argparse
import json
import math
import os
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
    check_positive,
    count_arg,
    default_vector_paths,
    judges_from_args,
    load_model_layer_vectors,
    load_named_model,
    load_trait_arg,
    load_vectors_arg,
    lock_out,
    out_path,
    read_prompts,
    slug,
)

__all__ = ["configure_parser", "run"]

DESCRIPTION = (
    "Finetuning shift (paper section 5): for each finetuned model, (mean last-prompt-token activation of the "
    "finetuned model - the same for the base model) . unit vector at --layer, averaged over the eval prompts (the "
    "trait's eval questions, or --prompts). With trait scores for the finetuned models (judged with --score, or "
    "given with --given-score), reports the Pearson correlation of shift with score for each vector (vectors of "
    "other traits give the cross-trait baseline) and draws the scatter. --model is the base model."
)


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "shift",
        help="finetuning shift along persona vectors, and its correlation with trait score",
        description=DESCRIPTION,
    )
    add_model_options(parser)
    parser.add_argument(
        "--finetuned",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="finetuned models (folders written by `finetune`, or any model of the base's shape)",
    )
    add_vector_arguments(parser)
    add_layer_option(parser, "layer of the shift")
    parser.add_argument(
        "--trait",
        default=None,
        help="trait whose eval questions are the prompts and whose rubric scores replies (and whose "
        "extracted vector is used when no --vector is given)",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="prompts instead of the trait's eval questions (.txt one a line, or .jsonl)",
    )
    parser.add_argument(
        "--questions", type=count_arg("--questions"), default=None, metavar="N", help="use the first N eval questions"
    )
    parser.add_argument(
        "--score",
        action="store_true",
        help="judge each finetuned model's replies to the eval questions (needs --trait)",
    )
    parser.add_argument("--score-base", action="store_true", help="with --score: judge the base model too")
    parser.add_argument(
        "--given-score",
        action="append",
        default=[],
        metavar="MODEL=SCORE",
        help="a known trait score of a finetuned model (as named in --finetuned, or its folder name); repeat per model",
    )
    add_judge_options(parser)
    add_generation_options(
        parser,
        samples=1,
        max_new_tokens=128,
        temperature=1.0,
        seed=0,
        batch_size=8,
        helps={
            "samples": "replies per question when scoring",
            "max_new_tokens": "reply length when scoring",
            "batch_size": "prompts per forward / generation batch",
        },
    )
    parser.add_argument(
        "--out",
        type=out_path,
        required=True,
        metavar="DIR",
        help="output folder: shift.json, shift.csv and one scatter per vector",
    )
    add_control_arguments(parser, default=100)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _given_scores(entries: list[str], labels: dict[str, str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for entry in entries:
        name, sep, value = entry.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or math.isnan(number):
            raise BadInput(f"--given-score {entry!r}: write MODEL=SCORE, e.g. runs/ft-evil=62.5")
        label = labels.get(name) or labels.get(name.rstrip("/"))
        if label is None:
            raise BadInput(f"--given-score {entry!r}: {name!r} is not one of --finetuned")
        scores[label] = number
    return scores


def _labels(names: list[str]) -> list[str]:
    """Short unique labels: the folder name, made unique with its parents when needed."""
    labels = []
    for name in names:
        parts = Path(name.rstrip("/")).parts or (name,)
        depth = 1
        label = os.path.join(*parts[-depth:])
        while label in labels and depth < len(parts):
            depth += 1
            label = os.path.join(*parts[-depth:])
        if label in labels:
            label = f"{label}#{len(labels)}"
        labels.append(label)
    return labels


def _prompts(args: argparse.Namespace, trait: Any) -> list[Any]:
    from persona_lens.core.chat import make_messages

    if args.prompts is not None:
        prompts = read_prompts(args.prompts)
    elif trait is not None:
        prompts = [make_messages(q) for q in trait.eval_questions]
    else:
        raise BadInput("give --trait (its eval questions are the prompts) or --prompts FILE")
    if args.questions is not None:
        if args.questions < 1:
            raise BadInput("--questions must be >= 1")
        prompts = prompts[: args.questions]
    if args.score and trait is None:
        raise BadInput("--score needs --trait (its eval questions and rubric)")
    if args.score_base and not args.score:
        raise BadInput("--score-base needs --score")
    return prompts


def _study(args: argparse.Namespace, trait: Any, prompts: list[Any]) -> Any:
    """Load the base model, the vectors and the judges, and run the study (the finetunes one at a time)."""
    from persona_lens.experiments.shift import shift_study

    labels = _labels(args.finetuned)
    by_name = {
        **{n: lab for n, lab in zip(args.finetuned, labels)},
        **{lab: lab for lab in labels},
        **{n.rstrip("/"): lab for n, lab in zip(args.finetuned, labels)},
    }
    given = _given_scores(args.given_score, by_name)
    paths = default_vector_paths(args, trait.name if trait is not None else None)
    if args.score:
        check_judge_arg(args, trait)
    base, layer, vectors = load_model_layer_vectors(args, paths)
    against = load_vectors_arg(args.against, base, args.allow_other_model)
    judge = coherence_judge = None
    if args.score:
        judge, coherence_judge = judges_from_args(args, trait, base)
    questions = (
        list(trait.eval_questions[: args.questions] if args.questions else trait.eval_questions)
        if trait is not None
        else None
    )

    def load(name: str):
        model = load_named_model(name, args)
        if (model.cfg.n_layers, model.cfg.d_model) != (base.cfg.n_layers, base.cfg.d_model):
            raise BadInput(
                f"{name} has {model.cfg.n_layers} layers and d_model {model.cfg.d_model}; the base "
                f"{base.cfg.model_name} has {base.cfg.n_layers} and {base.cfg.d_model}"
            )
        return model

    try:
        study = shift_study(
            base,
            list(args.finetuned),
            prompts,
            vectors,
            layer,
            labels=labels,
            scores=given,
            judge=judge,
            rubric=trait.rubric if trait is not None else None,
            questions=questions,
            evaluate_base=args.score_base,
            load=load,
            batch_size=args.batch_size,
            allow_other_model=args.allow_other_model,
            controls=args.controls,
            control_seed=args.control_seed,
            against=against,
            progress=not args.json,
            **(
                {
                    "n_samples": args.samples,
                    "max_new_tokens": args.max_new_tokens,
                    "temperature": args.temperature,
                    "seed": args.seed,
                    "coherence_judge": coherence_judge,
                }
                if args.score
                else {}
            ),
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    study.trait = trait.name if trait is not None else None
    return study


def draw(study: Any, out: Path) -> list[Path]:
    """Write every figure of ``study`` (fresh, or :meth:`ShiftStudy.load`-ed from ``out``) into ``out``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.projections import shift_figures

    return [
        path
        for (name, kind), figure in shift_figures(study).items()
        for path in write_figure(figure, out / f"shift_{slug(name)}{kind}.html")
    ]


def summarise(study: Any, files: list[Path]) -> dict[str, Any]:
    """The summary printed (``--json``) for a study, fresh or loaded."""
    scores = study.scores()
    data = study.to_json()
    return {
        "base": study.base_model,
        "layer": study.layer,
        "traits": study.traits,
        "models": [{"label": r.label, "shift": r.shift, "score": s} for r, s in zip(study.results, scores)],
        "base_score": study.base_evaluation.mean_score if study.base_evaluation else None,
        "correlations": data["correlations"],
        "baselines": data["baselines"],
        "model_baselines": {r.label: {t: b.to_dict() for t, b in r.baselines.items()} for r in study.results},
        "files": [str(path) for path in files],
    }


def _print(summary: dict[str, Any], n_prompts: int) -> None:
    traits = summary["traits"]
    print(f"shift at layer {summary['layer']} relative to {summary['base']} over {n_prompts} prompts:")
    print("\t".join(["model", *traits, "score"]))
    for row in summary["models"]:
        print(
            "\t".join(
                [
                    row["label"],
                    *(f"{row['shift'][t]:+.4f}" for t in traits),
                    "n/a" if row["score"] is None else f"{row['score']:.1f}",
                ]
            )
        )
    for row in summary["models"]:
        for name in traits:
            print(f"  {row['label']} along {name}: {baseline_line(summary['model_baselines'][row['label']][name])}")
    for name, corr in summary["correlations"].items():
        if corr["pearson_r"] is not None:
            print(f"r(shift along {name}, score) = {corr['pearson_r']:.3f} over {corr['n_models']} models")
            print(f"  {baseline_line(summary['baselines'][name]['pearson_r'])}")
    print("wrote " + ", ".join(summary["files"]))


def run(args: argparse.Namespace) -> int:
    trait = load_trait_arg(args.trait) if args.trait else None
    prompts = _prompts(args, trait)
    check_positive(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    lock_out(args.out)
    check_controls(args)
    study = _study(args, trait, prompts)
    files = [*study.save(args.out), *draw(study, args.out)]
    summary = summarise(study, files)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, study.n_prompts)
    return EXIT_OK
