"""``python -m persona_lens judges evaluate``: how well a judge agrees with a reader on a labeled reply set.

    python -m persona_lens judges evaluate --judge offline --split dev
    python -m persona_lens judges evaluate --judge rule --target trait --split test --out rule_test.json
    python -m persona_lens judges evaluate --scores my_judge.jsonl        # any judge's scores: {"id", "score"}
    python -m persona_lens judges evaluate --readers                      # the two readings against each other

Prints, per target (coherent, trait), a table pooled and per trait: accuracy, balanced accuracy, Cohen's kappa and
the AUROC of the raw score, each with a bootstrap 95% interval (:mod:`persona_lens.judges.evaluate`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_OK, BadInput
from persona_lens.cli.options import (
    _arg_type,
    add_model_options,
    check_out_file,
    load_model_arg,
    load_trait_arg,
    seed_arg,
    threshold_arg,
)

__all__ = ["configure_parser", "run", "EVALUATED_JUDGES"]

EVALUATED_JUDGES = ("offline", "rule", "likelihood", "local")
DEFAULT_SET = Path("benchmarks/labels")


def _bootstrap_arg(text: str) -> int:
    """``--bootstrap``: 0 to :data:`persona_lens.judges.evaluate.MAX_BOOTSTRAP` (10**12 ran for ever)."""
    from persona_lens.judges.evaluate import check_bootstrap

    return _arg_type(int, check_bootstrap, "--bootstrap")(text)  # type: ignore[no-any-return]


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "judges", help="measure judges against a reader's labels", description="Judges measured against readers."
    )
    commands = parser.add_subparsers(dest="judges_command", metavar="ACTION")
    evaluate = commands.add_parser(
        "evaluate",
        help="agreement of a judge with the labels of a reply set (accuracy, kappa, AUROC, CIs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument(
        "--set",
        type=Path,
        default=DEFAULT_SET,
        metavar="DIR",
        help=f"the labeled set's folder: replies.jsonl, generation.jsonl, reading_*.jsonl (default {DEFAULT_SET})",
    )
    evaluate.add_argument(
        "--labels",
        type=Path,
        action="append",
        default=[],
        metavar="READING.jsonl",
        help="a reading (id, trait_expressed, coherent); repeat for several: the reference is "
        "the rows they agree on (default: every reading_*.jsonl of --set that labels every reply)",
    )
    evaluate.add_argument(
        "--judge",
        choices=EVALUATED_JUDGES,
        default="offline",
        help="offline: the offline coherence judge (the default of every command) and the "
        "trait's rule; rule: the rule judges; likelihood: the likelihood coherence judge "
        "(calibrates per trait: slow); local: the model judging itself (default offline)",
    )
    evaluate.add_argument(
        "--scores",
        type=Path,
        metavar="SCORES.jsonl",
        help='evaluate these scores instead of running a judge: one {"id", "score"} '
        "(0-100 or null) per line; needs --target coherent or trait",
    )
    evaluate.add_argument(
        "--readers",
        action="store_true",
        help="report the second reading's agreement with the first (inter-reading agreement)",
    )
    evaluate.add_argument(
        "--target", choices=["coherent", "trait", "both"], default="both", help="which label to predict (default both)"
    )
    evaluate.add_argument("--split", choices=["dev", "test", "all"], default="dev", help="rows to use (default dev)")
    evaluate.add_argument(
        "--threshold",
        type=threshold_arg("--threshold"),
        default=50.0,
        help="a score at or above this means yes (default 50)",
    )
    evaluate.add_argument(
        "--bootstrap",
        type=_bootstrap_arg,
        default=1000,
        help="bootstrap resamples for the 95%% intervals (default 1000; 0: none)",
    )
    evaluate.add_argument("--seed", type=seed_arg("--seed"), default=0, help="bootstrap seed (default 0)")
    evaluate.add_argument("--out", type=Path, metavar="FILE.json", help="also write the reports as JSON here")
    evaluate.add_argument(
        "--save-scores",
        type=Path,
        metavar="FILE.jsonl",
        help="write the judge's scores ({id, target, score}) here, to evaluate again with --scores",
    )
    add_model_options(evaluate)
    evaluate.set_defaults(func=run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _labeled_set(args: argparse.Namespace) -> Any:
    from persona_lens.judges.evaluate import LabeledSet, load_labeled_set

    replies, generation = args.set / "replies.jsonl", args.set / "generation.jsonl"
    for path in (replies, generation):
        if not path.is_file():
            raise BadInput(
                f"--set {args.set}: no {path.name} there; point --set at a labeled set's folder (benchmarks/labels)"
            )
    readings = args.labels or sorted(args.set.glob("reading_*.jsonl"))
    if not readings:
        raise BadInput(f"--set {args.set}: no reading_*.jsonl there; pass the readers' files with --labels")
    for path in readings:
        if not path.is_file():
            raise BadInput(f"--labels {path}: no such file")
    if len({path.resolve() for path in readings}) < len(readings):  # a reading against itself agrees perfectly
        raise BadInput(f"--labels: a reading is given twice ({', '.join(map(str, readings))}); give each once")
    try:
        labeled = load_labeled_set(replies, generation, readings)
    except ValueError as error:
        raise BadInput(str(error)) from None
    complete = [i for i, reading in enumerate(labeled.readings) if len(reading) == len(labeled.replies)]
    if not args.labels and complete and len(complete) < len(readings):
        # a partial reading (benchmarks/labels/reading_c.jsonl: a third reading of the 31 disagreements) would cut
        # the default reference down to its rows: 9 dev rows of one class instead of 294
        for i in sorted(set(range(len(readings))) - set(complete)):
            print(
                f"note: {readings[i]} labels {len(labeled.readings[i])} of {len(labeled.replies)} replies: left out "
                "of the default reference (the readings of every reply); name every reading with --labels to use it",
                file=sys.stderr,
            )
        readings = [readings[i] for i in complete]
        labeled = LabeledSet(
            labeled.replies, [labeled.readings[i] for i in complete], [labeled.reading_names[i] for i in complete]
        )
    for path, reading in zip(readings, labeled.readings):
        if len(reading) < len(labeled.replies):  # the reference keeps only the rows every reading labeled
            print(
                f"note: {path} labels {len(reading)} of {len(labeled.replies)} replies; the reference uses only "
                "the rows every reading labeled (choose readings with --labels)",
                file=sys.stderr,
            )
    return labeled


def _read_scores(path: Path, target: str, labeled: Any) -> dict[str, float | None]:
    """The scores of ``path`` for ``target`` (:func:`persona_lens.judges.evaluate.read_scores`), refusing ids that
    are not replies of the labeled set (scores of another reply set)."""
    from persona_lens.judges.evaluate import read_scores

    try:
        scores = read_scores(path, target)
    except ValueError as error:
        raise BadInput(f"--scores: {error}") from None
    unknown = sorted(set(scores) - {r.id for r in labeled.replies})
    if unknown:
        raise BadInput(
            f"--scores {path}: ids that are not replies of --set ({', '.join(map(repr, unknown[:3]))}; "
            f"{len(unknown)} in all): these scores are of another reply set; score the replies of this one"
        )
    return scores


def _judge_scores(
    args: argparse.Namespace, labeled: Any, target: str, rows: list[Any], model: Any
) -> dict[str, float | None]:
    """The judge's score of each row (for ``target``), judging each trait's rows with that trait's judges."""
    from persona_lens.judges.base import COHERENCE_RUBRIC

    scores: dict[str, float | None] = {}
    for trait_name in sorted({r.trait for r in rows}):
        members = [r for r in rows if r.trait == trait_name]
        trait = None if trait_name == "none" else _labeled_trait(args, trait_name)
        judge, rubric = _build_judge(args.judge, target, trait, model)
        if getattr(judge, "uses_model", True) is False and not getattr(args, "_said_rules_only", False):
            args._said_rules_only = True  # the report's name says it too
            print(
                f"note: the offline judge has no fit for {args.model} (only for the models in its weights file): it "
                "scores with its model-free fit on the rule features, not the model's likelihoods",
                file=sys.stderr,
            )
        try:
            judged = judge.score(rubric if rubric else COHERENCE_RUBRIC, [(r.question, r.reply) for r in members])
        except ValueError as error:  # a reply the judge cannot read (longer than the model's context)
            raise BadInput(f"{args.set / 'replies.jsonl'}: {error}") from None
        for row, score in zip(members, judged):
            scores[row.id] = score
    return scores


def _labeled_trait(args: argparse.Namespace, name: str) -> Any:
    """The trait a labeled reply names: a registered trait's name (never a path to a file)."""
    replies = args.set / "replies.jsonl"
    if "/" in name or "\\" in name or name.endswith(".json"):
        raise BadInput(
            f"{replies}: trait {name!r} is a path; a labeled reply names a trait (python -m persona_lens traits list)"
        )
    try:
        return load_trait_arg(name)
    except BadInput as error:
        first = str(error).splitlines()
        raise BadInput(f"{replies}: trait {name!r} of a reply: {' '.join(x.strip() for x in first)}") from None


def _build_judge(kind: str, target: str, trait: Any, model: Any) -> tuple[Any, str]:
    from persona_lens.judges.base import COHERENCE_RUBRIC
    from persona_lens.judges.rule import RuleJudge

    if target == "trait":
        if kind == "local":
            from persona_lens.judges.local import LocalJudge

            return LocalJudge(model), trait.rubric
        if not trait.rule:
            raise BadInput(f"trait {trait.name!r} has no rule; use --judge local or --scores")
        return RuleJudge(trait.rule), trait.rubric
    contexts = (None, trait.prompt_pairs[0].positive) if trait is not None and trait.prompt_pairs else (None,)
    if kind == "offline":
        from persona_lens.judges.offline import OfflineCoherenceJudge

        return OfflineCoherenceJudge(model, contexts), COHERENCE_RUBRIC
    if kind == "rule":
        return RuleJudge("coherence"), COHERENCE_RUBRIC
    if kind == "local":
        from persona_lens.judges.local import LocalJudge

        return LocalJudge(model), COHERENCE_RUBRIC
    from persona_lens.judges.factory import build_likelihood_coherence
    from persona_lens.traits.schema import load_trait

    base = trait if trait is not None else load_trait("pirate")  # the default role: the shared questions
    if trait is None:
        from dataclasses import replace

        base = replace(base, prompt_pairs=())
    return build_likelihood_coherence(model, base, progress=True), COHERENCE_RUBRIC


def _check_outputs_are_not_inputs(args: argparse.Namespace) -> None:
    """``--out`` or ``--save-scores`` on a file of the labeled set or on ``--scores`` would replace the data it was
    measured on (``--out benchmarks/labels/reading_a.jsonl`` overwrote a reading with the report)."""
    inputs = [
        args.set / "replies.jsonl",
        args.set / "generation.jsonl",
        *args.labels,
        *args.set.glob("reading_*.jsonl"),
    ]
    if args.scores is not None:
        inputs.append(args.scores)
    resolved = {path.resolve(): path for path in inputs}
    outputs = [("--out", args.out), ("--save-scores", args.save_scores)]
    for flag, path in outputs:
        if path is not None and path.resolve() in resolved:
            raise BadInput(
                f"{flag} {path} is an input of this command ({resolved[path.resolve()]}); choose another path"
            )
    if args.out is not None and args.save_scores is not None and args.out.resolve() == args.save_scores.resolve():
        raise BadInput(f"--out and --save-scores are the same file ({args.out}); give each its own path")


def run(args: argparse.Namespace) -> int:
    from persona_lens.judges.evaluate import evaluate_scores, format_report, reading_agreement

    if args.out is not None:
        check_out_file(args.out)
    if args.save_scores is not None:
        check_out_file(args.save_scores, "--save-scores")
    if args.scores is not None and args.target == "both":
        raise BadInput("--scores holds one judge's scores for one label: add --target coherent or --target trait")
    _check_outputs_are_not_inputs(args)
    labeled = _labeled_set(args)
    targets = ["coherent", "trait"] if args.target == "both" else [args.target]
    reports = []
    if args.readers:
        if len(labeled.readings) < 2:
            raise BadInput("--readers needs two readings (two reading_*.jsonl in --set, or --labels twice)")
        for target in targets:
            reports.append(
                reading_agreement(labeled, target=target, split=args.split, bootstrap=args.bootstrap, seed=args.seed)
            )
    else:
        model = None
        needs_model = args.scores is None and (
            args.judge in ("likelihood", "local") or (args.judge == "offline" and "coherent" in targets)
        )
        if needs_model:
            model = load_model_arg(args)
        saved = []
        for target in targets:
            rows = labeled.rows(args.split, trait=target == "trait")
            if args.scores is not None:
                scores, name = _read_scores(args.scores, target, labeled), args.scores.stem
            else:
                kind = args.judge if not (target == "trait" and args.judge in ("offline", "likelihood")) else "rule"
                scores, name = _judge_scores(args, labeled, target, rows, model), f"{kind} ({target})"
                if kind == "offline" and getattr(args, "_said_rules_only", False):
                    name = f"offline, rules-only fit ({target})"
                saved += [{"id": rid, "target": target, "score": s} for rid, s in scores.items()]
            try:
                reports.append(
                    evaluate_scores(
                        labeled,
                        scores,
                        target=target,
                        split=args.split,
                        threshold=args.threshold,
                        judge=name,
                        bootstrap=args.bootstrap,
                        seed=args.seed,
                    )
                )
            except ValueError as error:
                raise BadInput(f"--scores {args.scores}: {error}" if args.scores else str(error)) from None
        if args.save_scores is not None:
            from persona_lens.core.io import write_text_atomic

            write_text_atomic(args.save_scores, "".join(json.dumps(r) + "\n" for r in saved))
    for report in reports:
        print(format_report(report))
        print()
    if args.out is not None:
        from persona_lens.core.io import write_json_atomic

        write_json_atomic(args.out, [r.to_dict() for r in reports])
    return EXIT_OK
