"""``python -m persona_lens roles``: create role files with Claude, list, show and validate them (persona space).

* ``roles new NAME --description "..." [--model M] [--out DIR] [--force] [--prompts N]``: writes ``DIR/NAME.json``
  (``DIR`` defaults to ``./traits/roles``, where ``space build`` finds roles); needs ``ANTHROPIC_API_KEY``.
  Bring hundreds of roles by calling it once per name (a shell loop over a names file).
* ``roles list [--json]``: every role found (the ``roles/`` folder of each trait directory).
* ``roles show NAME [--json]``: one role, by name or path.
* ``roles validate PATH...``: check role files; exit code 2 if any is invalid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_BAD_INPUT, EXIT_OK, BadInput
from persona_lens.cli.options import count_arg
from persona_lens.cli.traits import (
    add_catalogue_commands,
    add_new_arguments,
    print_catalogue,
    run_generation,
    validate_files,
)

__all__ = ["configure_parser", "run_new", "run_list", "run_show", "run_validate", "DESCRIPTION"]

DESCRIPTION = """\
  roles new NAME --description "..." [--model M] [--out DIR] [--force] [--prompts N]
      write DIR/NAME.json (DIR defaults to ./traits/roles); needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL is respected)
  roles list [--json]
      every role found: the roles/ folder of the packaged traits, ./traits and $PERSONA_LENS_TRAITS
  roles show NAME [--json]
      one role, by name or path
  roles validate PATH...
      check role files (a folder: its .json files; _questions.json as the shared questions); exit code 2 if any is
      invalid"""


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "roles",
        help="create (with Claude), list, show and validate the role files of a persona space",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="roles_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _print_help(parser))

    new = commands.add_parser("new", help="generate a role file with Claude from a name and a description")
    add_new_arguments(new, "role", "lighthouse_keeper", Path("traits") / "roles")
    new.add_argument(
        "--prompts",
        type=count_arg("--prompts"),
        default=5,
        metavar="N",
        help="how many system-prompt variants to ask for (default: 5, as in the Assistant-axis paper)",
    )
    new.set_defaults(func=run_new)

    add_catalogue_commands(commands, "role", run_list, run_show, run_validate)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_BAD_INPUT


def run_new(args: argparse.Namespace) -> int:
    """Generate ``args.out / f"{args.name}.json"`` with Claude."""
    from persona_lens.traits.generate import generate_role
    from persona_lens.traits.roles import save_role

    return run_generation(args, "role", generate_role, save_role, n_prompts=args.prompts)


def run_list(args: argparse.Namespace) -> int:
    """Print every role found, with its description (or why it does not load)."""
    from persona_lens.traits.roles import RoleError, list_roles, load_role, roles_dirs

    rows = []
    for name in list_roles():
        try:
            role = load_role(name)
        except RoleError as error:
            rows.append({"name": name, "valid": False, "default": None, "description": None, "error": str(error)})
        else:
            rows.append(
                {
                    "name": name,
                    "path": str(role.source),
                    "valid": True,
                    "default": role.default,
                    "description": role.description,
                    "error": None,
                    "label": "[default] " if role.default else "",
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    return print_catalogue(rows, "role", roles_dirs(), "roles folder")


def run_show(args: argparse.Namespace) -> int:
    """Print one role, readable or as JSON."""
    from persona_lens.traits.roles import RoleError, load_role, role_to_dict

    try:
        role = load_role(args.name)
    except RoleError as error:
        raise BadInput(str(error)) from None
    if args.json:
        print(json.dumps(role_to_dict(role), indent=2, ensure_ascii=False))
        return EXIT_OK
    lines = [
        f"role: {role.name}" + (" (the default persona)" if role.default else ""),
        f"file: {role.source}",
        "",
        role.description,
        "",
        "system prompts:",
    ]
    lines += [
        f"  {i}. {prompt if prompt is not None else '(no system prompt)'}"
        for i, prompt in enumerate(role.system_prompts, 1)
    ]
    lines += ["", "rubric:"] + [f"  {line}" for line in role.rubric.splitlines()]
    if role.jailbreaks:
        lines += ["", "jailbreaks:"] + [f"  {i}. {text}" for i, text in enumerate(role.jailbreaks, 1)]
    if role.rule:
        lines += ["", f"rule judge: {role.rule}"]
    print("\n".join(lines))
    return EXIT_OK


def run_validate(args: argparse.Namespace) -> int:
    """Check each file; print ``ok`` or its problems. Exit 2 if any is invalid."""
    from types import SimpleNamespace

    from persona_lens.traits.roles import QUESTIONS_FILE, RoleError, load_role, load_role_questions

    def load(path: str) -> Any:
        """A role file, or the shared questions file (``_questions.json``, checked as what it is)."""
        if Path(path).name == QUESTIONS_FILE:
            questions = load_role_questions(path)
            return SimpleNamespace(name=f"shared questions: {len(questions.build)} build, {len(questions.eval)} eval")
        return load_role(path)

    paths: list[str] = []
    for path in args.paths:  # a folder stands for its .json files (the questions file included)
        folder = Path(path)
        if folder.is_dir():
            found = sorted(str(p) for p in folder.glob("*.json"))
            if not found:
                raise BadInput(f"{folder} is a folder without .json files; give role files or a roles folder")
            paths.extend(found)
        else:
            paths.append(path)
    return validate_files(paths, load, RoleError, "role")
