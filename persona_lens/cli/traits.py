"""``python -m persona_lens traits``: create trait files with Claude, list, show and validate them.

* ``traits new NAME --description "..." [--model M] [--out DIR] [--force]``: writes ``DIR/NAME.json``
  (``DIR`` defaults to ``./traits``); needs ``ANTHROPIC_API_KEY`` (``ANTHROPIC_BASE_URL`` is respected).
* ``traits list [--json]``: every trait found (see :func:`persona_lens.traits.schema.traits_dirs`).
* ``traits show NAME [--json]``: one trait, by name or path.
* ``traits validate PATH...``: check trait files; exit code 2 if any is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, BadInput
from persona_lens.cli.options import check_out_file, count_arg, out_path
from persona_lens.traits.schema import (  # noqa: E501
    Trait,
    TraitError,
    list_traits,
    load_trait,
    save_trait,
    trait_to_dict,
    traits_dirs,
)

__all__ = [
    "configure_parser",
    "run_new",
    "run_list",
    "run_show",
    "run_validate",
    "DESCRIPTION",
    "add_new_arguments",
    "run_generation",
    "add_catalogue_commands",
    "validate_files",
    "print_catalogue",
]

DESCRIPTION = """\
  traits new NAME --description "..." [--model M] [--out DIR] [--force]
      write DIR/NAME.json (DIR defaults to ./traits); needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL is respected)
  traits list [--json]
      every trait found: the packaged traits, ./traits and $PERSONA_LENS_TRAITS
  traits show NAME [--json]
      one trait, by name or path
  traits validate PATH...
      check trait files; exit code 2 if any is invalid"""

_DEFAULT_MODEL = "claude-sonnet-4-5"  # = persona_lens.judges.claude.DEFAULT_MODEL, not imported: anthropic loads slowly


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "traits",
        help="create (with Claude), list, show and validate trait files",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="traits_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _print_help(parser))

    new = commands.add_parser("new", help="generate a trait file with Claude from a name and a description")
    add_new_arguments(new, "trait", "evil", Path("traits"))
    new.add_argument(
        "--no-monitoring",
        action="store_true",
        help="skip graded system prompts and many-shot examples (a smaller, cheaper file)",
    )
    new.set_defaults(func=run_new)

    add_catalogue_commands(commands, "trait", run_list, run_show, run_validate)


def add_catalogue_commands(
    commands: Any,
    what: str,
    run_list: Callable[[argparse.Namespace], int],
    run_show: Callable[[argparse.Namespace], int],
    run_validate: Callable[[argparse.Namespace], int],
) -> None:
    """The ``list``, ``show NAME`` and ``validate PATH...`` subcommands of a kind of data file (traits, roles)."""
    listing = commands.add_parser("list", help=f"list the {what}s found")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)

    show = commands.add_parser("show", help=f"show one {what}")
    show.add_argument("name", help=f"{what} name or path to a .json file")
    show.add_argument("--json", action="store_true", help=f"print the {what} file's JSON")
    show.set_defaults(func=run_show)

    validate = commands.add_parser("validate", help=f"check {what} files (exit code 2 if any is invalid)")
    validate.add_argument("paths", nargs="+", metavar="PATH", help=f"{what} files (or names)")
    validate.set_defaults(func=run_validate)


def validate_files(paths: list[str], load: Callable[[str], Any], error: type[Exception], what: str) -> int:
    """Load each path with ``load``; print ``ok PATH (name)`` or the problems. Exit 2 if any is invalid."""
    bad = 0
    for path in paths:
        try:
            item = load(path)
        except error as problem:
            bad += 1
            print(str(problem), file=sys.stderr)
        else:
            print(f"ok {path} ({item.name})")
    if bad:
        print(f"{bad} of {len(paths)} {what} file(s) invalid", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_BAD_INPUT


def add_new_arguments(new: argparse.ArgumentParser, what: str, example: str, default_out: Path) -> None:
    """The options every ``... new NAME`` command shares (a file generated with Claude): name, description, model,
    ``--out``, ``--force``, ``--max-attempts``."""
    new.add_argument("name", help=f"{what} name: lowercase letters, digits, '_' and '-' (e.g. {example})")
    new.add_argument("--description", required=True, help=f"one paragraph saying what the {what} is")
    new.add_argument("--model", default=None, help=f"Claude model (default: {_DEFAULT_MODEL})")
    new.add_argument(
        "--out",
        type=out_path,
        default=default_out,
        metavar="DIR",
        help=f"directory to write NAME.json into (default: ./{default_out})",
    )
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument(
        "--max-attempts",
        type=count_arg("--max-attempts"),
        default=3,
        metavar="N",
        help="how many replies to ask for before giving up on invalid ones (default: 3)",
    )


def run_generation(
    args: argparse.Namespace, what: str, generate: Callable[..., Any], save: Callable[[Any, Path], Path], **options: Any
) -> int:
    """Ask Claude for ``args.name`` through ``generate(name, description, model=, max_attempts=, report=,
    **options)`` and write it with ``save`` to ``args.out / NAME.json``: every check that costs nothing (the file,
    the key, the options) comes before the paid call, and API failures are reported without a traceback."""
    from persona_lens.judges.claude import API_KEY_HELP, MissingAPIKeyError
    from persona_lens.traits.generate import GenerationReport, TraitGenerationError

    path = Path(args.out) / f"{args.name}.json"
    check_out_file(path)  # before the paid call: a bad --out must not cost a generated file
    if path.exists() and not args.force:
        raise BadInput(f"{path} already exists; pass --force to overwrite it")
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise BadInput(API_KEY_HELP)
    if args.max_attempts < 1:
        raise BadInput("--max-attempts must be at least 1")
    model = args.model or _DEFAULT_MODEL
    report = GenerationReport()
    print(f"asking {model} for {what} {args.name!r} (this can take a few minutes)...", file=sys.stderr)
    try:
        made = generate(
            args.name, args.description, model=model, max_attempts=args.max_attempts, report=report, **options
        )
    except ValueError as error:  # bad name or empty description
        raise BadInput(str(error)) from None
    except MissingAPIKeyError as error:
        raise BadInput(str(error)) from None
    except TraitGenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # the API failed after the SDK's retries: report it without a traceback
        import anthropic

        if not isinstance(error, anthropic.APIError):
            raise
        print(f"error: the Anthropic API failed: {error}", file=sys.stderr)
        return EXIT_FAILURE
    written = save(made, path)
    cost = report.estimated_cost_usd
    print(
        f"wrote {written} ({report.attempts} attempt(s), {report.usage.input_tokens} input and "
        f"{report.usage.output_tokens} output tokens" + (f", about ${cost:.2f}" if cost is not None else "") + ")"
    )
    return EXIT_OK


def run_new(args: argparse.Namespace) -> int:
    """Generate ``args.out / f"{args.name}.json"`` with Claude."""
    from persona_lens.traits.generate import generate_trait

    return run_generation(args, "trait", generate_trait, save_trait, monitoring=not args.no_monitoring)


def run_list(args: argparse.Namespace) -> int:
    """Print every trait found, with its file and description (or why it does not load)."""
    rows = []
    for name in list_traits():
        try:
            trait = load_trait(name)
        except TraitError as error:
            rows.append(
                {"name": name, "path": _path_of(name), "valid": False, "description": None, "error": str(error)}
            )
        else:
            rows.append(
                {
                    "name": name,
                    "path": str(trait.source) if trait.source else _path_of(name),
                    "valid": True,
                    "description": trait.description,
                    "error": None,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    return print_catalogue(rows, "trait", traits_dirs(), "trait directory")


def print_catalogue(rows: list[dict[str, Any]], what: str, searched: list[Path], folder: str) -> int:
    """One line per row (``name``, ``valid``, ``description``, optional ``path`` and ``label``), or how to make
    the first when there is none."""
    if not rows:
        where = ", ".join(str(d) for d in searched) or f"no {folder} exists"
        print(
            f"no {what}s found (searched: {where}); create one with: python -m persona_lens {what}s new NAME "
            '--description "..."'
        )
        return EXIT_OK
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        where = row.get("path") or row["name"]
        text = row["description"] if row["valid"] else f"(invalid: run `{what}s validate {where}`)"
        text = row.get("label", "") + " ".join(text.split())
        print(f"{row['name']:<{width}}  {text[:100] + ('...' if len(text) > 100 else '')}")
    return EXIT_OK


def _path_of(name: str) -> str | None:
    for directory in traits_dirs():
        candidate = directory / f"{name}.json"
        if candidate.is_file():
            return str(candidate)
    return None


def run_show(args: argparse.Namespace) -> int:
    """Print one trait, readable or as JSON."""
    try:
        trait = load_trait(args.name)
    except TraitError as error:
        raise BadInput(str(error)) from None
    if args.json:
        print(json.dumps(trait_to_dict(trait), indent=2, ensure_ascii=False))
    else:
        print(_describe(trait))
    return EXIT_OK


def _describe(trait: Trait) -> str:
    lines = [f"trait: {trait.name}", f"file: {trait.source}", "", trait.description, "", "system prompts:"]
    for index, pair in enumerate(trait.prompt_pairs, 1):
        lines += [f"  {index}. + {pair.positive}", f"     - {pair.negative}"]
    for title, questions in (
        ("extraction questions", trait.extract_questions),
        ("evaluation questions", trait.eval_questions),
    ):
        lines += ["", f"{title} ({len(questions)}):"] + [f"  {i}. {q}" for i, q in enumerate(questions, 1)]
    lines += ["", "rubric:"] + [f"  {line}" for line in trait.rubric.splitlines()]
    if trait.graded_system_prompts:
        lines += ["", "graded system prompts (suppressing -> eliciting):"]
        lines += [f"  {i}. {p}" for i, p in enumerate(trait.graded_system_prompts, 1)]
    if trait.many_shot_examples:
        lines += ["", f"many-shot examples: {len(trait.many_shot_examples)}"]
    if trait.rule:
        lines += ["", f"rule judge: {trait.rule}"]
    return "\n".join(lines)


def run_validate(args: argparse.Namespace) -> int:
    """Check each file; print ``ok`` or its problems. Exit 2 if any is invalid."""
    return validate_files(args.paths, load_trait, TraitError, "trait")
