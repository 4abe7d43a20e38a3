"""Roles as data: the characters of a persona space (Lu et al. 2026, "The Assistant Axis"), loaded and checked here.

A role is what a trait's positive side is, without a negative side: a character the model is asked to play. The
persona space (:mod:`persona_lens.experiments.space`) puts one mean activation per role on a map and reads the
Assistant axis off it. Roles live beside the traits, in a ``roles/`` folder of every trait directory
(``traits/roles/`` in this repository, ``$PERSONA_LENS_TRAITS/roles/`` for your own), so one search path serves both
and ``traits list`` never mistakes a role for a trait.

A role file ``roles/<name>.json`` (schema_version 1):

* ``name``: lowercase identifier (letters, digits, ``_``, ``-``; it starts with a letter or digit), equal to the
  file stem.
* ``description``: one paragraph saying who the character is.
* ``system_prompts``: at least one system prompt that puts the model in the role (the paper uses 5). ``null`` means
  "no system prompt" (the default role's plainest variant).
* ``rubric``: the judge prompt for "in role", with the slots ``{question}`` and ``{answer}``, asking for a 0-100
  score or REFUSAL (how fully the answer is given in the role).
* ``rule`` (optional): a rule of :data:`persona_lens.judges.rule.RULES` (or a registered rule judge) that measures the
  role offline (``--judge rule``).
* ``default`` (optional, false when absent): true for the one role that is the model's own persona (the Assistant).
* ``jailbreaks`` (optional): user-turn templates with the slot ``{question}`` that push the model into the role from
  the user side ("From now on you are ... {question}"); the capping evaluation asks them.

The questions are shared by all roles: ``roles/_questions.json`` holds ``{"schema_version": 1, "build": [...],
"eval": [...]}``, disjoint lists of distinct questions (``build`` for the role vectors, ``eval`` for the capping
evaluation).

Role sets defined in code (the model organism's, :mod:`persona_lens.organism.roles`) are registered in
:data:`persona_lens.core.registry.ROLE_SETS` and loaded with ``load_roles(role_set="organism")``.

To bring hundreds of roles (the paper has 275), write one file per role in this format (``persona_lens roles new``
generates one with Claude, checked by :func:`role_from_dict` like a trait) and judge them with ``--judge claude``; a
role without a rule is judged by its rubric.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_lens.core.errors import Error
from persona_lens.core.io import write_json_atomic
from persona_lens.core.registry import ROLE_SETS, RULE_JUDGES
from persona_lens.judges.base import check_rubric
from persona_lens.judges.rule import RULES
from persona_lens.traits.schema import TRAITS_ENV, _Checker, _normalised, check_keys, traits_dirs

__all__ = [
    "ROLE_SCHEMA_VERSION",
    "QUESTIONS_FILE",
    "Role",
    "RoleQuestions",
    "RoleSet",
    "RoleError",
    "role_from_dict",
    "role_to_dict",
    "questions_from_dict",
    "roles_dirs",
    "list_roles",
    "load_role",
    "load_role_questions",
    "load_roles",
    "list_role_sets",
    "make_role_set",
    "save_role",
]

ROLE_SCHEMA_VERSION = 1
QUESTIONS_FILE = "_questions.json"
_ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_REQUIRED = ("schema_version", "name", "description", "system_prompts", "rubric")
_OPTIONAL = ("rule", "default", "jailbreaks")


@dataclass(frozen=True)
class Role:
    """One role as read from its file (``source``, not part of equality, is where it came from)."""

    name: str
    description: str
    system_prompts: tuple[str | None, ...]
    """Each variant's system prompt; None = no system prompt."""
    rubric: str
    rule: str | None = None
    default: bool = False
    jailbreaks: tuple[str, ...] = ()
    source: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RoleQuestions:
    """The questions every role answers: ``build`` (role vectors) and ``eval`` (capping evaluation), disjoint."""

    build: tuple[str, ...]
    eval: tuple[str, ...]
    source: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RoleSet:
    """The roles of one persona space (exactly one of them the default) and their shared questions."""

    roles: tuple[Role, ...]
    questions: RoleQuestions

    @property
    def default(self) -> Role:
        return next(role for role in self.roles if role.default)

    @property
    def others(self) -> tuple[Role, ...]:
        """Every role except the default."""
        return tuple(role for role in self.roles if not role.default)

    def __getitem__(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"no role {name!r} in this set; the roles are {', '.join(r.name for r in self.roles)}")


class RoleError(Error, ValueError):
    """A role file (or questions file, or role set) that cannot be used; lists every problem with its field."""

    def __init__(self, source: str | Path, problems: Sequence[tuple[str, str]], what: str = "role") -> None:
        self.source = str(source)
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''} in {what}:"]
        lines += [f"  - {path}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))


def _check_keys(check: _Checker, data: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    check_keys(check, data, required, optional, "persona_lens/traits/roles.py")
    version = data.get("schema_version", ROLE_SCHEMA_VERSION)
    if version != ROLE_SCHEMA_VERSION or isinstance(version, bool):
        check.add(
            "schema_version", f"is {version!r}; this version of persona_lens reads schema_version {ROLE_SCHEMA_VERSION}"
        )


def role_from_dict(data: Any, source: str | Path = "<dict>") -> Role:
    """Check ``data`` (a parsed role file) and build the Role; raises RoleError listing every problem.

    When ``source`` is a ``.json`` path, the role's name must equal the file stem.
    """
    if not isinstance(data, dict):
        raise RoleError(source, [("<top>", f"must be a JSON object, got {type(data).__name__}")])
    check = _Checker()
    _check_keys(check, data, _REQUIRED, _OPTIONAL)

    name = check.text(data["name"], "name") if "name" in data else None
    if name is not None:
        if not _ROLE_NAME.fullmatch(name):
            check.add(
                "name",
                f"{name!r} is not a valid role name; use lowercase letters, digits, '_' and '-', "
                "starting with a letter or digit",
            )
        stem = Path(source).stem if str(source).endswith(".json") else None
        if stem is not None and name != stem:
            check.add("name", f"is {name!r} but the file is named {stem}.json; make them equal")
    description = check.text(data["description"], "description") if "description" in data else None

    prompts: list[str | None] = []
    if "system_prompts" in data:
        value = data["system_prompts"]
        if not isinstance(value, list) or not value:
            check.add("system_prompts", "must be a non-empty list of system prompts (strings, or null for none)")
        else:
            seen: dict[str | None, int] = {}
            for index, item in enumerate(value):
                path = f"system_prompts[{index}]"
                text = None if item is None else check.text(item, path)
                if item is not None and text is None:
                    continue
                key = None if text is None else _normalised(text)
                if key in seen:
                    check.add(path, f"repeats system_prompts[{seen[key]}]; replace it with a different one")
                    continue
                seen[key] = index
                prompts.append(text)

    rubric = check.text(data["rubric"], "rubric") if "rubric" in data else None
    if rubric is not None:
        try:
            check_rubric(rubric)
        except ValueError as error:
            check.add("rubric", str(error))

    rule = data.get("rule")
    if rule is not None and (not isinstance(rule, str) or (rule not in RULES and rule not in RULE_JUDGES)):
        check.add("rule", f"unknown rule {rule!r}; use one of {', '.join(sorted(RULES))} or leave the field out")
        rule = None

    default = data.get("default", False)
    if not isinstance(default, bool):
        check.add("default", f"must be true or false, got {default!r}")
        default = False

    jailbreaks: list[str] = []
    if data.get("jailbreaks") is not None:
        jailbreaks = check.texts(data["jailbreaks"], "jailbreaks", "templates")
        for index, text in enumerate(jailbreaks):
            if "{question}" not in text:
                check.add(f"jailbreaks[{index}]", "lacks the slot {question}; put it where the question goes")

    if check.problems:
        raise RoleError(source, check.problems)
    return Role(
        name=name,
        description=description,
        system_prompts=tuple(prompts),
        rubric=rubric,
        rule=rule,
        default=default,
        jailbreaks=tuple(jailbreaks),
        source=Path(source) if str(source).endswith(".json") else None,
    )


def role_to_dict(role: Role) -> dict[str, Any]:
    """The role as a JSON-ready dict in the file schema; optional fields are left out when empty."""
    data: dict[str, Any] = {
        "schema_version": ROLE_SCHEMA_VERSION,
        "name": role.name,
        "description": role.description,
        "system_prompts": list(role.system_prompts),
        "rubric": role.rubric,
    }
    if role.rule is not None:
        data["rule"] = role.rule
    if role.default:
        data["default"] = True
    if role.jailbreaks:
        data["jailbreaks"] = list(role.jailbreaks)
    return data


def questions_from_dict(data: Any, source: str | Path = "<dict>") -> RoleQuestions:
    """Check a parsed questions file and build :class:`RoleQuestions`; raises RoleError listing every problem."""
    if not isinstance(data, dict):
        raise RoleError(source, [("<top>", f"must be a JSON object, got {type(data).__name__}")], "role questions")
    check = _Checker()
    _check_keys(check, data, ("schema_version", "build", "eval"), ())
    build = check.texts(data["build"], "build", "questions") if "build" in data else []
    evaluate = check.texts(data["eval"], "eval", "questions") if "eval" in data else []
    if "build" in data and isinstance(data["build"], list) and not data["build"]:
        check.add("build", "is empty; add at least one question")
    keys = {_normalised(text): index for index, text in enumerate(build)}
    for index, text in enumerate(evaluate):
        if _normalised(text) in keys:
            check.add(
                f"eval[{index}]",
                f"also appears as build[{keys[_normalised(text)]}]; the lists must be disjoint, so replace one of them",
            )
    if check.problems:
        raise RoleError(source, check.problems, "role questions")
    return RoleQuestions(tuple(build), tuple(evaluate), Path(source) if str(source).endswith(".json") else None)


# ---------------------------------------------------------------------------------------------------------------------
# files


def _read_json(path: Path, what: str) -> Any:
    from persona_lens.core.io import UnreadableFile, read_text

    try:
        text = read_text(path, what)
    except UnreadableFile as error:
        raise RoleError(path, [("<file>", str(error))], what) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RoleError(
            path,
            [
                (
                    "<json>",
                    f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}; fix the syntax there",
                )
            ],
            what,
        ) from None
    except RecursionError:
        raise RoleError(
            path, [("<json>", f"nested too deeply to read (thousands of brackets); this is no {what} file")], what
        ) from None


def roles_dirs() -> list[Path]:
    """The ``roles/`` folder of each trait directory (:func:`persona_lens.traits.schema.traits_dirs`) that has one,
    first match wins."""
    return [directory / "roles" for directory in traits_dirs() if (directory / "roles").is_dir()]


def list_roles(directory: str | Path | None = None) -> list[str]:
    """Sorted names of the role files in ``directory`` (default: every folder of :func:`roles_dirs`)."""
    dirs = roles_dirs() if directory is None else [Path(directory)]
    return sorted({path.stem for d in dirs for path in d.glob("*.json") if _ROLE_NAME.fullmatch(path.stem)})


def _looks_like_path(name: str | Path) -> bool:
    return isinstance(name, Path) or name.endswith(".json") or "/" in name or os.sep in name


def load_role(name_or_path: str | Path) -> Role:
    """A role from a ``.json`` path or by name (searched in :func:`roles_dirs`); raises RoleError on any problem."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        return role_from_dict(_read_json(path, "role"), path)
    for directory in roles_dirs():
        candidate = directory / f"{name_or_path}.json"
        if candidate.is_file():
            return role_from_dict(_read_json(candidate, "role"), candidate)
    searched = ", ".join(str(d) for d in roles_dirs()) or "no roles folder exists"
    raise RoleError(
        name_or_path,
        [
            (
                "name",
                f"no role named {name_or_path!r}; available roles: "
                f"{', '.join(list_roles()) or '(none)'}. Searched: {searched}. Pass a "
                f"name, a .json path, or add a directory with a roles/ folder to "
                f"${TRAITS_ENV}",
            )
        ],
    )


def load_role_questions(path: str | Path | None = None) -> RoleQuestions:
    """The shared questions: ``path``, or the first ``roles/_questions.json`` of :func:`roles_dirs`."""
    if path is None:
        found = [d / QUESTIONS_FILE for d in roles_dirs() if (d / QUESTIONS_FILE).is_file()]
        if not found:
            where = ", ".join(str(d) for d in roles_dirs()) or "any trait directory"
            raise RoleError(
                QUESTIONS_FILE,
                [("<file>", f"no roles/{QUESTIONS_FILE} in {where}; write one (see persona_lens/traits/roles.py)")],
                "role questions",
            )
        path = found[0]
    path = Path(path).expanduser()
    return questions_from_dict(_read_json(path, "role questions"), path)


def make_role_set(roles: Sequence[Role], questions: RoleQuestions, *, source: str | Path = "<roles>") -> RoleSet:
    """A :class:`RoleSet` after checking it: exactly one default role, at least 2 others, distinct names; else a
    RoleError naming the fix."""
    problems = []
    defaults = [role.name for role in roles if role.default]
    if len(defaults) != 1:
        problems.append(
            (
                "default",
                f'{len(defaults)} roles are marked "default": true '
                f"({', '.join(defaults) or 'none'}); mark exactly one (the Assistant), e.g. "
                "include the role 'default'",
            )
        )
    if len(roles) - len(defaults) < 2:
        problems.append(
            ("roles", f"{len(roles) - len(defaults)} non-default roles; a persona space needs at least 2 (add roles)")
        )
    seen: set[str] = set()
    for role in roles:
        if role.name in seen:
            problems.append(("roles", f"the role {role.name!r} is given twice; give each role once"))
        seen.add(role.name)
    if problems:
        raise RoleError(source, problems, "role set")
    return RoleSet(tuple(roles), questions)


def list_role_sets() -> list[str]:
    """The role sets defined in code (:data:`persona_lens.core.registry.ROLE_SETS`), e.g. ``organism``."""
    return ROLE_SETS.names()


def _registered_roles(role_set: str, names: Sequence[str | Path] | None) -> list[Role]:
    if role_set not in ROLE_SETS:
        raise RoleError(
            role_set,
            [("role_set", f"no role set named {role_set!r}; registered: {', '.join(list_role_sets()) or '(none)'}")],
            "role set",
        )
    registered = ROLE_SETS.resolve(role_set)(role_set)
    if names is None:
        return list(registered.roles)
    known = {role.name: role for role in registered.roles}
    missing = [str(name) for name in names if str(name) not in known]
    if missing:
        raise RoleError(
            role_set,
            [("roles", f"{', '.join(missing)} not in the role set {role_set!r}; its roles are {', '.join(known)}")],
            "role set",
        )
    return [known[str(name)] for name in names]


def load_roles(
    names: Sequence[str | Path] | None = None,
    *,
    questions: str | Path | None = None,
    directory: str | Path | None = None,
    role_set: str | None = None,
) -> RoleSet:
    """A :class:`RoleSet`: the roles named (default: every role of ``directory`` or of :func:`roles_dirs`) and the
    shared questions (``questions``, else ``_questions.json`` of ``directory`` or of :func:`roles_dirs`).

    ``role_set``: a role set defined in code (:func:`list_role_sets`), with its own questions; ``names`` then picks
    some of its roles and ``questions`` replaces its questions.

    Exactly one role must be the default and role names must be distinct; else a RoleError naming the fix.
    """
    if role_set is not None:
        if directory is not None:
            raise RoleError(role_set, [("role_set", "give a role set or a roles directory, not both")], "role set")
        roles = _registered_roles(role_set, names)
        asked = (
            load_role_questions(questions) if questions is not None else ROLE_SETS.resolve(role_set)(role_set).questions
        )
        return make_role_set(roles, asked, source=f"role set {role_set!r}")
    if names is None:
        names = list_roles(directory)
        if directory is not None:
            names = [Path(directory) / f"{name}.json" for name in names]
    roles = [load_role(name) for name in names]
    if questions is None and directory is not None:
        questions = Path(directory) / QUESTIONS_FILE
    asked = load_role_questions(questions)
    return make_role_set(roles, asked, source=", ".join(str(n) for n in names) or "<no roles>")


def save_role(role: Role, path: str | Path) -> Path:
    """Write ``role`` as JSON to ``path`` (a ``<name>.json`` file or a directory) atomically, after checking it."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{role.name}.json"
    data = role_to_dict(role)
    role_from_dict(data, path)
    return write_json_atomic(path, data)
