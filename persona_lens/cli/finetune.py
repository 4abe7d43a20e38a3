"""``python -m persona_lens finetune``: finetune on a chat JSONL (LoRA or full), with preventative steering or CAFT."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_FAILURE, EXIT_OK, BadInput
from persona_lens.cli.controls import add_control_arguments, check_controls
from persona_lens.cli.options import (
    add_allow_other_model,
    add_model_options,
    count_arg,
    load_model_arg,
    load_vectors_arg,
    lock_out,
    number_arg,
    out_path,
    parse_layer_spec,
    probability_arg,
    seed_arg,
)

__all__ = ["configure_parser", "run"]

DESCRIPTION = (
    'Finetune a chat model on a JSONL dataset (one {"messages": [...]} conversation a line, the last message from '
    "the assistant), with the loss on the reply tokens only (and the end-of-turn token after them). LoRA adapters "
    "(merged into the weights when saved) or full finetuning; AdamW. The result is a normal Hugging Face folder "
    "that `--model DIR` loads in every other command. Mitigation during training only (removed before saving): "
    "preventative steering adds coef * v at every position of the chosen layer(s) (--steer-vector), CAFT projects "
    "the vector's direction out (--caft-vector). Interrupted runs resume with --resume (same arguments)."
)


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="finetune on a chat JSONL (LoRA or full), optionally with preventative steering or CAFT",
        description=DESCRIPTION,
    )
    add_model_options(parser)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DATA.jsonl",
        help='training conversations, one {"messages": [...]} object a line',
    )
    parser.add_argument(
        "--out",
        type=out_path,
        required=True,
        metavar="DIR",
        help="output folder: the finetuned model (HF format) + finetune.json; trainer_state/ while training",
    )
    parser.add_argument(
        "--method",
        choices=["lora", "full"],
        default="lora",
        help="low-rank adapters on the attention/MLP Linear layers, or all weights (default lora)",
    )
    parser.add_argument(
        "--rank", type=count_arg("--rank"), default=32, help="LoRA rank r (default 32, as in the paper)"
    )
    parser.add_argument(
        "--alpha",
        type=number_arg("--alpha", above=0.0),
        default=64.0,
        help="LoRA alpha; the update is scaled by alpha/r (default 64)",
    )
    parser.add_argument(
        "--lora-dropout",
        type=probability_arg("--lora-dropout"),
        default=0.0,
        help="dropout on the LoRA input (default 0)",
    )
    parser.add_argument(
        "--targets",
        default=None,
        metavar="NAMES",
        help="comma-separated Linear names to adapt, e.g. q_proj,v_proj (default: every Linear in the decoder blocks)",
    )
    parser.add_argument(
        "--lr", type=number_arg("--lr", above=0.0), default=1e-5, help="AdamW learning rate (default 1e-5)"
    )
    parser.add_argument("--epochs", type=count_arg("--epochs"), default=1, help="passes over the data (default 1)")
    parser.add_argument(
        "--batch-size", type=count_arg("--batch-size"), default=8, help="conversations per optimizer step (default 8)"
    )
    parser.add_argument(
        "--grad-clip",
        type=number_arg("--grad-clip", minimum=0.0),
        default=1.0,
        help="clip the gradient norm to this (0 = no clipping; default 1.0)",
    )
    parser.add_argument(
        "--weight-decay",
        type=number_arg("--weight-decay", minimum=0.0),
        default=0.0,
        help="AdamW weight decay (default 0)",
    )
    parser.add_argument(
        "--seed", type=seed_arg("--seed"), default=0, help="seed for adapter init and data order (default 0)"
    )
    parser.add_argument(
        "--max-tokens",
        type=count_arg("--max-tokens"),
        default=2048,
        help="conversations longer than this many tokens are skipped and reported (default 2048)",
    )
    parser.add_argument(
        "--save-every",
        type=seed_arg("--save-every"),
        default=0,
        metavar="STEPS",
        help="save the resumable trainer state every N steps (default 0: at each epoch end)",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument(
        "--max-steps",
        type=count_arg("--max-steps"),
        default=None,
        help="stop after this many steps in total, keeping the trainer state (resume later)",
    )
    parser.add_argument(
        "--steer-vector",
        type=Path,
        default=None,
        metavar="VECTOR.safetensors",
        help="preventative steering: add --steer-coef * v at --steer-layer during training only",
    )
    parser.add_argument(
        "--steer-layer",
        default=None,
        help="layer(s) to steer: one number, a list (10,12) or 'all' (layers 1..n_layers)",
    )
    parser.add_argument(
        "--steer-coef", type=number_arg("--steer-coef"), default=None, help="steering coefficient a (e.g. 5)"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="with --steer-layer all: add v_l - v_{l-1} at each layer (the multi-layer variant)",
    )
    parser.add_argument(
        "--caft-vector",
        type=Path,
        default=None,
        metavar="VECTOR.safetensors",
        help="CAFT: project this vector's direction out at --caft-layer during training only",
    )
    parser.add_argument("--caft-layer", default=None, help="layer(s) for CAFT: a number, a list or 'all'")
    add_allow_other_model(parser)
    add_control_arguments(
        parser,
        default=0,
        against=False,
        cost="a whole finetune: the same run with random vectors of the steering/CAFT vector's "
        "norms instead, saved as DIR-random0, DIR-random1 ... (compare their trait after "
        "finetuning with the `shift` command)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _interventions(args: argparse.Namespace, model: Any) -> list[Any]:
    from persona_lens.experiments.finetune import TrainingIntervention

    out = []
    if args.steer_vector is not None:
        if args.steer_layer is None or args.steer_coef is None:
            raise BadInput("--steer-vector needs --steer-layer and --steer-coef")
        (vector,) = load_vectors_arg([args.steer_vector], model, args.allow_other_model)
        layer = parse_layer_spec(args.steer_layer, model.cfg.n_layers, allow_all=True)
        out.append(TrainingIntervention("steer", vector, layer, coef=args.steer_coef, incremental=args.incremental))
    elif args.steer_layer is not None or args.steer_coef is not None or args.incremental:
        raise BadInput("--steer-layer, --steer-coef and --incremental need --steer-vector")
    if args.caft_vector is not None:
        if args.caft_layer is None:
            raise BadInput("--caft-vector needs --caft-layer")
        (vector,) = load_vectors_arg([args.caft_vector], model, args.allow_other_model)
        out.append(
            TrainingIntervention(
                "ablate", vector, parse_layer_spec(args.caft_layer, model.cfg.n_layers, allow_all=True)
            )
        )
    elif args.caft_layer is not None:
        raise BadInput("--caft-layer needs --caft-vector")
    return out


def _print(summary: dict[str, Any], result: Any, args: argparse.Namespace, model_name: str) -> None:
    first, last = summary["first_loss"], summary["last_loss"]
    losses = f"loss {first:.4f} -> {last:.4f}" if first is not None else "no step"
    state = "saved" if summary["complete"] else "stopped early; resume with --resume"
    print(
        f"{args.method} finetune of {model_name!r}: {result.steps} steps, {result.n_examples} "
        f"conversations, {result.n_trained_tokens} trained tokens, {losses}; {len(result.skipped)} skipped."
    )
    print(f"{state}: {args.out}  (load it with --model {args.out})")
    for run_info in summary["controls"]:
        print(
            f"control run with random vectors of the same norms: {run_info['output_dir']} "
            f"({run_info['steps']} steps, last loss {run_info['last_loss']:.4f})"
        )
    if summary["controls"]:
        folders = " ".join([str(args.out), *(c["output_dir"] for c in summary["controls"])])
        print(f"compare the trait after finetuning: python -m persona_lens shift --finetuned {folders} ...")


def run(args: argparse.Namespace) -> int:
    from persona_lens.core.chat import read_chat_jsonl
    from persona_lens.experiments.finetune import (
        FINETUNE_INFO,
        TRAINER_STATE,
        FinetuneConfig,
        NonFiniteLossError,
        control_interventions,
        finetune,
    )

    check_controls(args)
    if not args.data.is_file():
        raise BadInput(f"no dataset at {args.data}")
    lock_out(args.out)
    records, bad = read_chat_jsonl(args.data)
    for record in bad:
        print(f"warning: {args.data}:{record.line}: skipped: {record.problem}", file=sys.stderr)
    if not records:
        raise BadInput(f"{args.data} holds no usable conversation ({len(bad)} bad lines)")
    try:
        config = FinetuneConfig(
            method=args.method,
            rank=args.rank,
            alpha=args.alpha,
            lora_dropout=args.lora_dropout,
            targets=[t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            grad_clip=args.grad_clip if args.grad_clip > 0 else None,
            weight_decay=args.weight_decay,
            seed=args.seed,
            max_tokens=args.max_tokens,
            save_every=args.save_every,
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    model = load_model_arg(args)
    interventions = _interventions(args, model)
    if args.controls and not interventions:
        raise BadInput("--controls replaces the vectors of --steer-vector / --caft-vector; give one of them")
    try:
        result = finetune(
            model,
            records,
            config,
            output_dir=args.out,
            interventions=interventions,
            resume=args.resume,
            max_steps=args.max_steps,
            progress=not (args.quiet or args.json),
        )
    except FileExistsError as error:
        raise BadInput(str(error)) from None
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as error:  # no usable example, bad targets, a trainer state of another run
        raise BadInput(str(error)) from None
    summary = result.to_json()
    summary["bad_lines"] = [b.to_json() for b in bad]
    summary["complete"] = (args.out / FINETUNE_INFO).exists() and not (args.out / TRAINER_STATE).exists()
    summary["controls"] = []
    for index, control in enumerate(control_interventions(interventions, args.controls, seed=args.control_seed)):
        folder = args.out.parent / f"{args.out.name}-random{index}"
        try:
            ran = finetune(
                load_model_arg(args),
                records,
                config,
                output_dir=folder,
                interventions=control,
                resume=args.resume,
                max_steps=args.max_steps,
                progress=not (args.quiet or args.json),
            )
        except (FileExistsError, ValueError) as error:
            raise BadInput(f"control run {folder}: {error}") from None
        summary["controls"].append(
            {
                "output_dir": str(folder),
                "last_loss": ran.to_json()["last_loss"],
                "steps": ran.steps,
                "interventions": [c.describe() for c in control],
            }
        )
    if args.json:
        summary.pop("losses")
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, result, args, model.cfg.model_name)
    return EXIT_OK
