"""Traits as data: one JSON file per trait, loaded, checked and saved here.

A trait file ``traits/<name>.json`` (schema_version 1) holds everything an experiment needs for one trait:

* ``name``: lowercase identifier (letters, digits, ``_``, ``-``), equal to the file stem.
* ``description``: one paragraph saying what the trait is.
* ``system_prompts``: exactly 5 ``{"positive": ..., "negative": ...}`` pairs. The positive prompt elicits the trait
  ("You are an evil assistant. ..."), the negative one suppresses it ("You are a helpful assistant. ...").
* ``questions``: ``{"extract": [20 questions], "eval": [20 other questions]}``: questions that give room to show the
  trait, one split for extracting the vector and a disjoint one for evaluating it.
* ``rubric``: the judge prompt, with the slots ``{question}`` and ``{answer}``, asking for a 0-100 score or REFUSAL.
* ``graded_system_prompts`` (optional): exactly 8 system prompts from most suppressing to most eliciting.
* ``many_shot_examples`` (optional): at least 20 ``{"question": ..., "answer": ...}`` examples showing the trait.
* ``rule`` (optional): the name of a ``persona_lens.judges.rule.RULES`` rule that measures the trait exactly.

Trait names are looked up in ``$PERSONA_LENS_TRAITS`` (directories separated by ``os.pathsep``), then ``./traits``,
then the ``traits/`` folder of this repository; the first directory holding ``<name>.json`` wins.
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
from persona_lens.core.io import write_text_atomic
from persona_lens.core.registry import RULE_JUDGES, TRAITS
from persona_lens.judges.base import check_rubric
from persona_lens.judges.rule import RULES

__all__ = [
    "ManyShotExample",
    "PromptPair",
    "Trait",
    "TraitError",
    "list_traits",
    "load_trait",
    "save_trait",
    "trait_from_dict",
    "trait_to_dict",
    "traits_dirs",
    "SCHEMA_VERSION",
    "TRAITS_ENV",
]

SCHEMA_VERSION = 1
TRAITS_ENV = "PERSONA_LENS_TRAITS"
N_PROMPT_PAIRS = 5
N_QUESTIONS = 20
N_GRADED_PROMPTS = 8
MIN_MANY_SHOT = 20

_NAME = re.compile(r"[a-z0-9_-]+")
_REQUIRED_KEYS = ("schema_version", "name", "description", "system_prompts", "questions", "rubric")
_OPTIONAL_KEYS = ("graded_system_prompts", "many_shot_examples", "rule")
_REPO_TRAITS = Path(__file__).resolve().parents[2] / "traits"
#: Where a wheel install has the built-in traits (copied from the repository's traits/ at build time, setup.py).
_PACKAGED_TRAITS = Path(__file__).resolve().parent / "builtin"


@dataclass(frozen=True)
class PromptPair:
    """One system prompt that elicits the trait (positive) and one that suppresses it (negative)."""

    positive: str
    negative: str


@dataclass(frozen=True)
class ManyShotExample:
    """A question and an answer that clearly shows the trait, for many-shot prompting."""

    question: str
    answer: str


@dataclass(frozen=True)
class Trait:
    """One trait, as read from its JSON file (``source``, not part of equality, is the file it came from)."""

    name: str
    description: str
    prompt_pairs: tuple[PromptPair, ...]
    extract_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]
    rubric: str
    graded_system_prompts: tuple[str, ...] = ()
    many_shot_examples: tuple[ManyShotExample, ...] = ()
    rule: str | None = None
    source: Path | None = field(default=None, compare=False)


class TraitError(Error, ValueError):
    """A trait file (or dict, or name) that cannot be used; lists every problem found, each with its field.

    ``source`` is the file (or ``"<dict>"``, or the name looked up); ``problems`` a list of (field, message) pairs,
    the field written as a JSON path such as ``questions.extract[3]``.
    """

    def __init__(self, source: str | Path, problems: Sequence[tuple[str, str]]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''} in trait:"]
        lines += [f"  - {path}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------------
# checking


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


class _Checker:
    """Collects every problem of one trait dict instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def text(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"must be a string, got {type(value).__name__}; write it as a JSON string")
            return None
        if not value.strip():
            self.add(path, "is empty; write the text")
            return None
        return value

    def texts(self, value: Any, path: str, what: str, *, exactly: int | None = None) -> list[str]:
        """A list of distinct non-empty strings; returns the good ones (may be fewer than expected)."""
        if not isinstance(value, list):
            self.add(path, f"must be a list of strings, got {type(value).__name__}")
            return []
        self._count(value, path, what, exactly, None)
        good: list[str] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            text = self.text(item, item_path)
            if text is None:
                continue
            key = _normalised(text)
            if key in seen:
                self.add(item_path, f"repeats {path}[{seen[key]}]; replace it with a different one")
                continue
            seen[key] = index
            good.append(text)
        return good

    def _count(self, value: list, path: str, what: str, exactly: int | None, at_least: int | None) -> None:
        if exactly is not None and len(value) != exactly:
            change = f"add {exactly - len(value)}" if len(value) < exactly else f"remove {len(value) - exactly}"
            self.add(path, f"has {len(value)} {what}; it needs exactly {exactly} ({change})")
        if at_least is not None and len(value) < at_least:
            self.add(
                path,
                f"has {len(value)} {what}; it needs at least {at_least} (add {at_least - len(value)}), "
                "or leave the field out",
            )

    def object(self, value: Any, path: str, keys: tuple[str, ...]) -> dict | None:
        """A dict with exactly ``keys``; reports missing and unknown keys."""
        if not isinstance(value, dict):
            self.add(path, f"must be an object with the keys {', '.join(keys)}, got {type(value).__name__}")
            return None
        for key in keys:
            if key not in value:
                self.add(f"{path}.{key}", "is missing; add it")
        for key in value:
            if key not in keys:
                self.add(f"{path}.{key}", f"unknown key; the allowed keys are {', '.join(keys)}")
        return value

    def objects(
        self,
        value: Any,
        path: str,
        keys: tuple[str, ...],
        *,
        what: str,
        exactly: int | None = None,
        at_least: int | None = None,
    ) -> list[tuple[str, ...]]:
        """A list of objects with exactly ``keys`` and non-empty string values; returns the good ones as tuples."""
        if not isinstance(value, list):
            self.add(path, f"must be a list of objects with the keys {', '.join(keys)}, got {type(value).__name__}")
            return []
        self._count(value, path, what, exactly, at_least)
        good = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            entry = self.object(item, item_path, keys)
            if entry is None:
                continue
            texts = [self.text(entry[key], f"{item_path}.{key}") for key in keys if key in entry]
            if len(texts) == len(keys) and all(text is not None for text in texts):
                good.append(tuple(texts))
        return good


def check_keys(check: _Checker, data: dict, required: Sequence[str], optional: Sequence[str], schema: str) -> None:
    """Report unknown keys (with the known ones to rename to) and missing required keys (pointing to ``schema``)."""
    known = (*required, *optional)
    for key in data:
        if key not in known:
            check.add(str(key), f"unknown key; remove it or rename it to one of {', '.join(known)}")
    for key in required:
        if key not in data:
            check.add(key, f"is missing; add it (see {schema} for the schema)")


def trait_from_dict(data: dict, source: str | Path = "<dict>") -> Trait:
    """Check ``data`` (a parsed trait file) and build the Trait; raises TraitError listing every problem.

    ``source`` names where the data came from in error messages; when it is a ``.json`` path, the trait's name must
    equal the file stem.
    """
    check = _Checker()
    if not isinstance(data, dict):
        raise TraitError(source, [("<top>", f"must be a JSON object, got {type(data).__name__}")])

    check_keys(check, data, _REQUIRED_KEYS, _OPTIONAL_KEYS, "persona_lens/traits/schema.py")

    if "schema_version" in data and (
        data["schema_version"] != SCHEMA_VERSION or isinstance(data["schema_version"], bool)
    ):
        check.add(
            "schema_version",
            f"is {data['schema_version']!r}; this version of persona_lens reads schema_version {SCHEMA_VERSION}",
        )

    name = check.text(data["name"], "name") if "name" in data else None
    if name is not None:
        if not _NAME.fullmatch(name):
            check.add("name", f"{name!r} is not a valid name; use only lowercase letters, digits, '_' and '-'")
        stem = Path(source).stem if str(source).endswith(".json") else None
        if stem is not None and name != stem:
            check.add("name", f"is {name!r} but the file is named {stem}.json; make them equal")

    description = check.text(data["description"], "description") if "description" in data else None

    pairs: list[tuple[str, ...]] = []
    if "system_prompts" in data:
        pairs = check.objects(
            data["system_prompts"],
            "system_prompts",
            ("positive", "negative"),
            exactly=N_PROMPT_PAIRS,
            what="prompt pairs",
        )
        for index, (positive, negative) in enumerate(pairs):
            if _normalised(positive) == _normalised(negative):
                check.add(
                    f"system_prompts[{index}]",
                    "positive and negative prompts are the same; the positive one "
                    "must elicit the trait and the negative one suppress it",
                )

    extract: list[str] = []
    evaluate: list[str] = []
    if "questions" in data:
        questions = check.object(data["questions"], "questions", ("extract", "eval"))
        if questions is not None:
            if "extract" in questions:
                extract = check.texts(questions["extract"], "questions.extract", "questions", exactly=N_QUESTIONS)
            if "eval" in questions:
                evaluate = check.texts(questions["eval"], "questions.eval", "questions", exactly=N_QUESTIONS)
            extract_list = questions.get("extract") if isinstance(questions.get("extract"), list) else []
            eval_list = questions.get("eval") if isinstance(questions.get("eval"), list) else []
            extract_keys = {
                _normalised(text): index for index, text in enumerate(extract_list) if isinstance(text, str)
            }
            for index, text in enumerate(eval_list):
                if isinstance(text, str) and text.strip() and _normalised(text) in extract_keys:
                    check.add(
                        f"questions.eval[{index}]",
                        f"also appears as questions.extract"
                        f"[{extract_keys[_normalised(text)]}]; the splits must be "
                        "disjoint, so replace one of them",
                    )

    rubric = check.text(data["rubric"], "rubric") if "rubric" in data else None
    if rubric is not None:
        try:
            check_rubric(rubric)
        except ValueError as error:
            check.add("rubric", str(error))

    graded: list[str] = []
    if data.get("graded_system_prompts") is not None:
        graded = check.texts(
            data["graded_system_prompts"], "graded_system_prompts", "prompts", exactly=N_GRADED_PROMPTS
        )

    examples: list[tuple[str, ...]] = []
    if data.get("many_shot_examples") is not None:
        examples = check.objects(
            data["many_shot_examples"],
            "many_shot_examples",
            ("question", "answer"),
            at_least=MIN_MANY_SHOT,
            what="examples",
        )

    rule = data.get("rule")
    if rule is not None:
        if not isinstance(rule, str):
            check.add("rule", f"must be a string, got {type(rule).__name__}")
            rule = None
        elif rule not in RULES and rule not in RULE_JUDGES:
            check.add("rule", f"unknown rule {rule!r}; use one of {', '.join(sorted(RULES))} or leave the field out")

    if check.problems:
        raise TraitError(source, check.problems)
    return Trait(
        name=name,
        description=description,
        prompt_pairs=tuple(PromptPair(positive, negative) for positive, negative in pairs),
        extract_questions=tuple(extract),
        eval_questions=tuple(evaluate),
        rubric=rubric,
        graded_system_prompts=tuple(graded),
        many_shot_examples=tuple(ManyShotExample(question, answer) for question, answer in examples),
        rule=rule,
        source=Path(source) if str(source).endswith(".json") else None,
    )


def trait_to_dict(trait: Trait) -> dict:
    """The trait as a JSON-ready dict in the file schema; optional fields are left out when empty."""
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": trait.name,
        "description": trait.description,
        "system_prompts": [{"positive": pair.positive, "negative": pair.negative} for pair in trait.prompt_pairs],
        "questions": {"extract": list(trait.extract_questions), "eval": list(trait.eval_questions)},
        "rubric": trait.rubric,
    }
    if trait.graded_system_prompts:
        data["graded_system_prompts"] = list(trait.graded_system_prompts)
    if trait.many_shot_examples:
        data["many_shot_examples"] = [
            {"question": example.question, "answer": example.answer} for example in trait.many_shot_examples
        ]
    if trait.rule is not None:
        data["rule"] = trait.rule
    return data


# ---------------------------------------------------------------------------------------------------------------------
# files


def _read_trait_file(path: Path) -> Trait:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraitError(path, [("<file>", "file not found; check the path")]) from None
    except UnicodeDecodeError as error:
        raise TraitError(
            path, [("<file>", f"is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8")]
        ) from None
    except OSError as error:
        raise TraitError(path, [("<file>", f"cannot be read: {error.strerror}")]) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise TraitError(
            path, [("<json>", "nested too deeply to read (thousands of brackets); this is no trait file")]
        ) from None
    except json.JSONDecodeError as error:
        raise TraitError(
            path,
            [
                (
                    "<json>",
                    f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
                    "fix the syntax there (often a missing comma or quote, or a trailing "
                    "comma)",
                )
            ],
        ) from None
    return trait_from_dict(data, path)


def save_trait(trait: Trait, path: str | Path) -> Path:
    """Write ``trait`` as JSON to ``path`` atomically (temporary file, then rename); returns the path written.

    ``path`` is a ``<name>.json`` file or an existing directory (the file is then ``<dir>/<name>.json``). The trait
    is checked first and its name must equal the file stem, so the saved file always loads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{trait.name}.json"
    if path.suffix != ".json":
        raise TraitError(path, [("<file>", f"a trait file must be named <name>.json; use {trait.name}.json")])
    data = trait_to_dict(trait)
    trait_from_dict(data, path)
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    return path


def traits_dirs() -> list[Path]:
    """Existing directories searched for trait names, first match wins: ``$PERSONA_LENS_TRAITS`` (split on
    ``os.pathsep``), ``./traits``, then the built-in traits: this repository's ``traits/`` (a source checkout or
    an editable install) or the copy a wheel ships in ``persona_lens/traits/builtin/``. Duplicates are dropped."""
    candidates = [Path(entry) for entry in os.environ.get(TRAITS_ENV, "").split(os.pathsep) if entry.strip()]
    candidates += [Path.cwd() / "traits", _REPO_TRAITS, _PACKAGED_TRAITS]
    dirs: list[Path] = []
    seen: set[Path] = set()
    for directory in candidates:
        resolved = directory.expanduser().resolve()
        if resolved.is_dir() and resolved not in seen:
            seen.add(resolved)
            dirs.append(resolved)
    return dirs


def list_traits() -> list[str]:
    """Sorted names of every trait file found in ``traits_dirs()``, plus the traits registered in code
    (:data:`persona_lens.core.registry.TRAITS`: the model organism's)."""
    files = {
        path.stem for directory in traits_dirs() for path in directory.glob("*.json") if _NAME.fullmatch(path.stem)
    }
    return sorted(files | set(TRAITS.names()))


def _looks_like_path(name_or_path: str | Path) -> bool:
    if isinstance(name_or_path, Path):
        return True
    return name_or_path.endswith(".json") or "/" in name_or_path or os.sep in name_or_path


def load_trait(name_or_path: str | Path) -> Trait:
    """Load a trait from a ``.json`` path or by name (see ``traits_dirs``).

    Args:
        name_or_path: A trait name (``traits/<name>.json``, the packaged traits, or one defined in code through
            the registry) or a path to a trait file.

    Returns:
        The checked :class:`Trait`.

    Raises:
        TraitError: An unknown name (the available ones are listed) or a file with a problem (file, field and
            fix named).

    Example:
        >>> import persona_lens as pl
        >>> trait = pl.load_trait("pirate")
        >>> trait.name, len(trait.prompt_pairs), len(trait.extract_questions)
        ('pirate', 5, 20)
    """
    if _looks_like_path(name_or_path):
        return _read_trait_file(Path(name_or_path).expanduser())
    name = name_or_path
    if _NAME.fullmatch(name):
        for directory in traits_dirs():
            candidate = directory / f"{name}.json"
            if candidate.is_file():
                return _read_trait_file(candidate)
        if name in TRAITS:  # defined in code (the organism's, from its world), reached by registry string
            return TRAITS.resolve(name)(name)
    available = list_traits()
    searched = ", ".join(str(directory) for directory in traits_dirs()) or (
        f"no trait directory exists (not {_REPO_TRAITS} nor {_PACKAGED_TRAITS}: the built-in trait files are "
        "missing from this install; reinstall persona_lens from a wheel or a source checkout, or point "
        f"${TRAITS_ENV} at a copy of the repository's traits/ folder)"
    )
    raise TraitError(
        name,
        [
            (
                "name",
                f"no trait named {name!r}; available traits: "
                f"{', '.join(available) or '(none)'}. Searched: {searched}. Pass one of these "
                f"names, a path to a .json file, or add a directory to ${TRAITS_ENV}",
            )
        ],
    )
