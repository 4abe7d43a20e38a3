"""``--ray [ADDRESS]`` and ``--engine URL``: where a command's generate calls run (README "Scaling up")."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from persona_lens.cli import BadInput
from persona_lens.cli.options import count_arg, number_arg

__all__ = ["add_scale_options", "announce_engine", "check_scale_args", "engine_arg", "executor_from_args"]


NO_VLLM = (
    "--engine vllm needs vLLM in this environment: run bash scripts/setup_vllm.sh and use "
    ".venv-vllm/bin/python (or give --engine the URL of a running server)"
)


def engine_arg(text: str) -> str:
    """The ``type`` of ``--engine``: ``vllm``, an ``http(s)://HOST[:PORT]`` URL, or ``vllm+http(s)://HOST:PORT``,
    checked before any model loads (a malformed URL was tried four times, or failed in urllib's own words, after
    the run had started)."""
    from urllib.parse import urlsplit

    from persona_lens.core.vllm_server import SCHEME

    value = text.strip()
    if value == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # before the run starts, not at its first generate call
            raise argparse.ArgumentTypeError(NO_VLLM)
        return value
    url = value[len(SCHEME) :] if value.startswith(SCHEME) else value
    form = "vllm+http://HOST:PORT" if value.startswith(SCHEME) else "'vllm', http://HOST:PORT or vllm+http://HOST:PORT"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--engine {value!r} is not a URL ({error}); give {form}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"--engine {value!r} is not an http(s) URL with a host; give {form}")
    if value.startswith(SCHEME) and port is None:
        raise argparse.ArgumentTypeError(
            f"--engine {value!r} names no port; give {form}, the port of the `vllm serve` (e.g. 8000)"
        )
    return value


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the generate calls on Ray workers, each holding its own copy of --model: no "
        "ADDRESS starts a local cluster; 'auto' or ray://HOST:PORT joins a running one. Same "
        "results as without; resumable as without",
    )
    parser.add_argument(
        "--ray-workers", type=count_arg("--ray-workers"), default=2, metavar="N", help="Ray workers (default 2)"
    )
    parser.add_argument(
        "--ray-gpus",
        type=number_arg("--ray-gpus", minimum=0),
        default=0,
        metavar="G",
        help="GPUs reserved per Ray worker (default 0; 1 on a GPU cluster); refused before Ray "
        "starts where the cluster has fewer",
    )
    parser.add_argument(
        "--ray-cpus",
        type=number_arg("--ray-cpus", minimum=0),
        default=1,
        metavar="C",
        help="CPUs per Ray worker (default 1; 0 lets more workers share a small machine)",
    )
    parser.add_argument(
        "--engine",
        type=engine_arg,
        default=None,
        metavar="URL|vllm|vllm+URL",
        help="an OpenAI-compatible server (vLLM, SGLang, llama.cpp, `transformers serve`) serving "
        "--model makes the unsteered replies; activations are still read here. Checked to serve "
        "the same tokenizer and chat template. 'vllm': an in-process vLLM engine of --model "
        "makes the steered replies and the activation reads too (needs vllm: scripts/setup_vllm.sh); "
        "'vllm+http://HOST:PORT': the same on a `vllm serve` started with persona_lens's worker "
        "extension (the command: docs/guides/scaling.md)",
    )
    parser.add_argument(
        "--engine-model",
        default=None,
        metavar="NAME",
        help="the served model name to ask for (default: the only one the server lists)",
    )
    parser.add_argument(
        "--engine-concurrency",
        type=count_arg("--engine-concurrency"),
        default=8,
        metavar="N",
        help="requests in flight at once (default 8)",
    )
    parser.add_argument(
        "--engine-timeout",
        type=number_arg("--engine-timeout", above=0),
        default=None,
        metavar="SECONDS",
        help="seconds without any answer from the engine before the run stops with an error "
        "naming the server (default: 60 + 0.5 per requested token); 429, 5xx and dropped "
        "connections are retried 3 times with backoff first",
    )
    parser.add_argument(
        "--engine-any-name",
        action="store_true",
        help="accept replies that name another model than the one asked for (a server that reports "
        "an alias); the prompt token counts are still checked",
    )


# Per command: what runs on the engine and what in this process, on a vLLM engine with our hooks (--engine vllm)
# and on an engine without them (--engine URL). Printed at the start of the run (announce_engine).
ENGINE_SPLIT: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "extract": (
        ("the replies and the activation reads", "the judges"),
        ("the replies", "the activation reads and the judges"),
    ),
    "sweep": (
        (
            "the baseline, prompted, steered and control replies",
            "the residual norms behind relative coefficients and the judges",
        ),
        (
            "the baseline and prompted replies",
            "the steered and control replies, the residual norms and the judges",
        ),
    ),
    "space build": (
        (
            "the role replies and their activation reads",
            "the judges and the default role's per-token projections (capping percentiles)",
        ),
        ("the role replies", "the activation reads, the judges and the per-token projections"),
    ),
    "space cap-eval": (
        ("the uncapped, capped and random-direction-capped replies (capped inside the engine)", "the judges"),
        (
            "the uncapped role replies",
            "the capped and random-direction-capped replies, the default role's replies and the judges",
        ),
    ),
    "screen": (
        ("the base replies", "the activation reads and projections that score the samples"),
        ("the base replies", "the activation reads and projections that score the samples"),
    ),
}


def announce_engine(args: argparse.Namespace, command: str) -> None:
    """Say on stderr, once per run, which steps of ``command`` run on ``--engine`` and which in this process."""
    engine = getattr(args, "engine", None)
    if engine is None:
        return
    hooked, plain = ENGINE_SPLIT[command]
    with_hooks = _with_hooks(engine)
    there, here = hooked if with_hooks else plain
    hint = (
        "" if with_hooks else " (a `vllm serve` with persona_lens's worker extension runs them too: --engine vllm+URL)"
    )
    print(f"--engine {engine}: {there} on the engine; {here} in this process{hint}", file=sys.stderr)


def _with_hooks(engine: str) -> bool:
    """Whether ``--engine`` names an engine that runs our hooks: in-process vLLM or a ``vllm+URL`` server."""
    from persona_lens.core.vllm_server import SCHEME

    return engine == "vllm" or engine.startswith(SCHEME)


def check_scale_args(args: argparse.Namespace) -> None:
    """Refuse what cannot run before any model is loaded or Ray started: ``--ray`` with ``--engine``, and a local
    cluster asked for more GPUs or CPUs per worker than this machine has (Ray would wait forever, saying nothing)."""
    if getattr(args, "engine", None) is not None and getattr(args, "ray", None) is not None:
        raise BadInput("choose --ray or --engine, not both")
    if getattr(args, "ray", None) != "local":
        return
    from persona_lens.experiments.executor import local_resources

    gpus, cpus = local_resources()
    for flag, asked, has, what in (
        ("--ray-gpus", args.ray_gpus, gpus, "GPU"),
        ("--ray-cpus", args.ray_cpus, cpus, "CPU"),
    ):
        if asked > has:
            raise BadInput(
                f"{flag} {asked:g}: each Ray worker asks for {asked:g} {what}s, but the local cluster "
                f"would have {gpus} GPUs and {cpus} CPUs, so Ray would wait forever; ask for at most "
                f"{has} (--ray-gpus 0 without a GPU)"
            )


def executor_from_args(args: argparse.Namespace) -> Any:
    """None (this process), an EngineExecutor for ``--engine``, or a RayExecutor loading ``--model`` with
    ``--device/--dtype`` for ``--ray``."""
    if getattr(args, "engine", None) is not None:
        if getattr(args, "ray", None) is not None:
            raise BadInput("choose --ray or --engine, not both")
        from persona_lens.experiments.executor import EngineExecutor

        if args.engine == "vllm":
            return EngineExecutor(_vllm_engine(args))
        if _with_hooks(args.engine):
            if getattr(args, "_vllm_server", None) is None:
                from persona_lens.core.vllm_server import VLLMServer

                args._vllm_server = VLLMServer(
                    args.engine,
                    model=args.engine_model,
                    concurrency=args.engine_concurrency,
                    timeout=args.engine_timeout,
                    allow_other_name=args.engine_any_name,
                )
            return EngineExecutor(args._vllm_server)
        from persona_lens.core.engine import OpenAIEngine

        return EngineExecutor(
            OpenAIEngine(
                args.engine,
                model=args.engine_model,
                concurrency=args.engine_concurrency,
                timeout=args.engine_timeout,
                allow_other_name=args.engine_any_name,
            )
        )
    if getattr(args, "ray", None) is None:
        return None
    if getattr(args, "_executor", None) is not None:  # one set of workers per command (they hold the cluster's CPUs)
        return args._executor
    check_scale_args(args)
    from persona_lens.experiments.executor import RayExecutor

    args._executor = RayExecutor(
        args.model,
        load_kwargs={"device": getattr(args, "device", None), "dtype": getattr(args, "dtype", None)},
        address=None if args.ray == "local" else args.ray,
        workers=args.ray_workers,
        num_cpus=args.ray_cpus,
        num_gpus=args.ray_gpus,
    )
    return args._executor


def _vllm_engine(args: argparse.Namespace) -> Any:
    """One in-process vLLM engine per command (it starts on the run's model at the first unit)."""
    if getattr(args, "_vllm_engine", None) is None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise BadInput(NO_VLLM) from None
        from persona_lens.core.vllm_engine import VLLMEngine

        args._vllm_engine = VLLMEngine()
    return args._vllm_engine
