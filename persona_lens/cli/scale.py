"""``--ray [ADDRESS]``: the options that spread a command's independent units over a Ray cluster."""

from __future__ import annotations

import argparse
from typing import Any

from persona_lens.cli import BadInput

__all__ = ["add_ray_options", "executor_from_args"]


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the generate calls on Ray workers, each holding its own copy of --model: no "
                             "ADDRESS starts a local cluster; 'auto' or ray://HOST:PORT joins a running one. Same "
                             "results as without; resumable as without")
    parser.add_argument("--ray-workers", type=int, default=2, metavar="N", help="Ray workers (default 2)")
    parser.add_argument("--ray-gpus", type=float, default=0, metavar="G",
                        help="GPUs reserved per Ray worker (default 0; 1 on a GPU cluster)")
    parser.add_argument("--ray-cpus", type=float, default=1, metavar="C", help="CPUs per Ray worker (default 1)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """None (this process) without ``--ray``, else a RayExecutor loading ``--model`` with ``--device/--dtype``."""
    if getattr(args, "ray", None) is None:
        return None
    if getattr(args, "_executor", None) is not None:  # one set of workers per command (they hold the cluster's CPUs)
        return args._executor
    if args.ray_workers < 1:
        raise BadInput(f"--ray-workers must be at least 1, got {args.ray_workers}")
    from persona_lens.experiments.executor import RayExecutor

    args._executor = RayExecutor(args.model, load_kwargs={"device": getattr(args, "device", None),
                                                          "dtype": getattr(args, "dtype", None)},
                                 address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                                 num_cpus=args.ray_cpus, num_gpus=args.ray_gpus)
    return args._executor
