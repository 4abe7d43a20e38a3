"""``python -m persona_lens``: one CLI, one subcommand per feature.

Each feature module listed in ``COMMAND_MODULES`` defines ``configure_parser(subparsers)``, which adds its
subcommand and sets ``func=run`` where ``run(args) -> int`` returns the exit code.

Exit codes, everywhere: 0 success, 2 bad input (unknown trait, malformed file, bad option), 1 failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from persona_lens.core.errors import Error

__all__ = ["main", "build_parser", "run_command", "parse_args", "EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT", "BadInput"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

COMMAND_MODULES: list[str] = [
    "persona_lens.cli.traits",
    "persona_lens.cli.extract",
    "persona_lens.cli.sweep",
    "persona_lens.cli.monitor",
    "persona_lens.cli.finetune",
    "persona_lens.cli.shift",
    "persona_lens.cli.screen",
    "persona_lens.cli.export",
    "persona_lens.cli.space",
    "persona_lens.cli.roles",
    "persona_lens.cli.judges",
]


class BadInput(Error):
    """Raised by a command for input the user can fix; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m persona_lens",
        description="Find, monitor and control persona vectors (Chen et al. 2025) on TransformerLens.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).configure_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args is None:
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    return run_command(args.func, args)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | None:
    """``parser.parse_args``, but a refused option (argparse already printed why) gives None, so that ``main()``
    returns exit code 2 in-process as for every other bad input; ``--help`` still exits 0."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == EXIT_BAD_INPUT:
            return None
        raise


def silence_progress_bars() -> None:
    """``--quiet``: no progress bars from Hugging Face either (downloads, weight loading), only our own output."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub / transformers are imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run_command(func, args: argparse.Namespace) -> int:
    """Run a command, turning :class:`BadInput` into exit code 2 and Ctrl-C into 130 (work so far is kept)."""
    if getattr(args, "quiet", False):
        silence_progress_bars()
    try:
        return int(func(args) or 0)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; everything written so far is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as error:
        import errno

        fixes = {
            errno.ENAMETOOLONG: "choose a shorter path (at most 255 bytes a name, 4,095 in all)",
            errno.ELOOP: "remove the loop of symbolic links or choose another path",
            errno.ENOTDIR: "a part of it is a file, not a folder; choose another path",
        }
        if error.errno not in fixes:  # a path given by the user that no file system can use: theirs to fix
            raise
        name = str(error.filename or "a path")
        print(
            f"error: {name[:80]}{'...' if len(name) > 80 else ''}: {error.strerror}; {fixes[error.errno]}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except Exception as error:
        from persona_lens.core.engine import EngineError, EngineMismatch
        from persona_lens.core.io import UnsafeOutput
        from persona_lens.core.vllm_engine import EngineHookError, EngineUnavailable
        from persona_lens.judges.base import JudgeAuthError

        # a wrong API key, an output path we must not write, an engine that failed, lied (after its retries), did
        # not start or does not run our hooks: the user's to fix, one sentence, stop at once
        engine_faults = (EngineError, EngineMismatch, EngineUnavailable, EngineHookError)
        if isinstance(error, (JudgeAuthError, UnsafeOutput, *engine_faults)):
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise
    finally:
        from persona_lens.cli.options import release_out_locks

        release_out_locks()
