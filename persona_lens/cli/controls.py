"""The controls options every analysis command shares (``--controls K``, ``--control-seed``, ``--against``) and the
summary line printed beside each number. Kept apart from :mod:`persona_lens.cli.options` so commands opt in."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput

__all__ = ["add_control_arguments", "check_controls", "baseline_line"]


def add_control_arguments(
    parser: argparse.ArgumentParser,
    default: int,
    *,
    cost: str = "one matmul on the activations already read",
    against: bool = True,
) -> None:
    """``--controls K`` (random directions of the vector's per-layer norm), ``--control-seed`` and, with
    ``against``, ``--against VECTOR`` (other traits' vectors as cross-trait controls)."""
    from persona_lens.cli.options import controls_arg

    parser.add_argument(
        "--controls",
        type=controls_arg("--controls"),
        default=default,
        metavar="K",
        help=f"seeded random directions with the vector's per-layer norm, measured beside it "
        f"(default {default}; 0: none). Each costs {cost}",
    )
    parser.add_argument("--control-seed", type=int, default=0, help="seed of the random directions (default 0)")
    if against:
        parser.add_argument(
            "--against",
            action="append",
            type=Path,
            default=[],
            metavar="VECTOR.safetensors",
            help="another trait's vector, measured beside each number as a cross-trait control "
            "(repeat for several; every --vector is also a control of the others)",
        )


def check_controls(args: argparse.Namespace) -> None:
    if args.controls < 0:
        raise BadInput(f"--controls must be >= 0 (0: no random directions), got {args.controls}")


def baseline_line(record: Any) -> str:
    """The one-line summary of a Baseline or of its ``to_dict()``."""
    from persona_lens.core.controls import Baseline

    baseline = record if isinstance(record, Baseline) else Baseline.from_dict(record)
    return baseline.summary()
