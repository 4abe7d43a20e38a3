"""Options shared by the commands (same names everywhere) and turning them into objects."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput

__all__ = ["add_model_options", "add_judge_options", "load_model_arg", "load_trait_arg", "parse_int_list",
           "parse_float_list", "slug", "default_run_dir"]

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_model_options(parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=default,
                        help="model: 'smollm2-135m-instruct' (embedded default), a tiny-* test model, a local HF "
                             f"folder or a Hugging Face id (default: {default})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 CPU)")


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", default="auto", choices=["auto", "rule", "claude", "local"],
                        help="who scores replies: the trait's exact rule, Claude (ANTHROPIC_API_KEY), or the model "
                             "itself from number-token probabilities; auto = rule when the trait has one, else claude")
    parser.add_argument("--claude-model", default=None, help="Claude model for --judge claude")
    parser.add_argument("--judge-cache", type=Path, default=Path("runs/judge_cache.sqlite"),
                        help="SQLite cache of judge scores shared by all runs (default: runs/judge_cache.sqlite)")


def load_model_arg(args: argparse.Namespace) -> Any:
    from persona_lens.models import load_model

    try:
        return load_model(args.model, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load model {args.model!r}: {error}") from error


def load_trait_arg(name: str) -> Any:
    from persona_lens.traits import TraitError, load_trait

    try:
        return load_trait(name)
    except TraitError as error:
        raise BadInput(str(error)) from error


def _parse_list(text: str, convert: Any, what: str) -> list:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(-?\d+)-(-?\d+)", part) if convert is int else None
        try:
            if match:
                values.extend(range(int(match.group(1)), int(match.group(2)) + 1))
            else:
                values.append(convert(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {part!r} in {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
    return values


def parse_int_list(text: str) -> list[int]:
    """``"4,8,12"`` or ``"10-20"`` or a mix."""
    return _parse_list(text, int, "layer")


def parse_float_list(text: str) -> list[float]:
    return _parse_list(text, float, "number")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "model"


def default_run_dir(model: str, trait: str) -> Path:
    return Path("runs") / slug(Path(model).name if Path(model).exists() else model) / slug(trait)
