"""``python -m persona_lens export``: convert a saved persona vector for llama.cpp (GGUF), numpy (npz) or the
authors' code (pt)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_FAILURE, EXIT_OK, BadInput
from persona_lens.cli.options import check_out_file, number_arg, out_path

__all__ = ["configure_parser", "run", "parse_layers"]

FORMATS = ("gguf", "npz", "pt")  # experiments.export.EXPORT_FORMATS (not imported: the parser loads no torch)


def parse_layers(spec: str) -> list[int]:
    """Parse ``"10-20"`` (inclusive), ``"4,8,12"`` or a mix such as ``"2-5,9"`` into sorted unique layers."""
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                start_text, end_text = part.split("-", 1)
                start, end = int(start_text), int(end_text)
                if start > end:
                    raise ValueError
                layers.update(range(start, end + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise BadInput(
                f"--layers {spec!r}: {part!r} is not a layer or an increasing range; use e.g. 10-20 or 4,8,12"
            ) from None
    return sorted(layers)


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="convert a persona vector to a llama.cpp control vector, .npz or the authors' .pt",
        description=(
            "Convert a persona vector saved by persona_lens (.safetensors) for other tools. "
            "gguf: llama.cpp control vector (llama-completion -m MODEL.gguf --control-vector FILE, or "
            "--control-vector-scaled FILE:SCALE); our layer l is written as "
            "direction.{l-1}, so layers 2..n_layers can be exported. npz: arrays 'vectors' and 'metadata' (JSON). "
            "pt: the authors' layout, torch.save of the [n_layers+1, d_model] tensor."
        ),
    )
    parser.add_argument("vector", type=Path, metavar="VECTOR.safetensors", help="a file written by save_vector")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", required=True, type=out_path, metavar="PATH", help="output file")
    parser.add_argument(
        "--layers", metavar="SPEC", help="gguf only: layers to export, e.g. 10-20 or 4,8,12 (default: 2..n_layers)"
    )
    parser.add_argument(
        "--coefficient",
        type=number_arg("--coefficient"),
        metavar="A",
        help="gguf only: scale written into the file (default 1.0)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument(
        "--normalize", action="store_true", help="gguf only: write unit vectors (times the coefficient)"
    )
    parser.add_argument("--model-hint", metavar="NAME", help="gguf only: controlvector.model_hint (default: model)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from persona_lens.core.vectors import VectorFileError, load_vector
    from persona_lens.experiments.export import export_vector

    if args.format != "gguf":
        given = [
            flag
            for flag, value in (
                ("--layers", args.layers),
                ("--coefficient", args.coefficient),
                ("--normalize", args.normalize or None),
                ("--model-hint", args.model_hint),
            )
            if value is not None
        ]
        if given:
            raise BadInput(f"{', '.join(given)} only apply to --format gguf; {args.format} keeps the whole vector")
    check_out_file(args.out)  # first: an empty, over-long or special --out is refused before anything looks at it
    if args.out.resolve() == args.vector.resolve():
        raise BadInput(f"--out {args.out} is the input file; choose another path")
    if args.out.is_dir():
        raise BadInput(f"--out {args.out} is a folder; give a file path")
    if args.out.exists() and not args.force:
        raise BadInput(f"--out {args.out} already exists; pass --force to overwrite it")
    check_out_file(args.out)
    try:
        vec = load_vector(args.vector)
    except (FileNotFoundError, VectorFileError) as error:
        raise BadInput(str(error)) from None

    try:
        result = export_vector(
            vec,
            args.out,
            args.format,
            input=str(args.vector),
            layers=parse_layers(args.layers) if args.layers is not None else None,
            coefficient=1.0 if args.coefficient is None else args.coefficient,
            normalize=args.normalize,
            model_hint=args.model_hint,
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    summary = result.to_json()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.format == "gguf":
        pairs = ", ".join(f"{layer}->{name}" for layer, name in summary["tensors"].items())
        print(
            f"wrote {args.out}: llama.cpp control vector {vec.trait!r} for {vec.model_name!r}, "
            f"layer->tensor {pairs}, "
            f"coefficient {summary['coefficient']}{' (unit vectors)' if args.normalize else ''}.\n"
            f"use: llama-completion -m MODEL.gguf --control-vector {args.out}  (or --control-vector-scaled "
            f"{args.out}:SCALE to scale it)"
        )
    else:
        print(
            f"wrote {args.out} ({args.format}): {vec.trait!r} for {vec.model_name!r}, shape "
            f"[{vec.n_layers + 1}, {vec.d_model}]"
        )
    return EXIT_OK
