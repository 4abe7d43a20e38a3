"""Named things that live outside the core, reached by ``"module:attr"`` strings so the core imports none of them.

Four registries, each a plain mapping from a name to the import path of a callable:

* :data:`MODELS`: model name -> ``loader(device=..., dtype=...)`` returning a HookedLM (``load_model`` looks here
  before Hugging Face);
* :data:`TRAITS`: trait name -> ``factory(name)`` returning a Trait defined in code (``load_trait`` looks here when no
  file of that name exists);
* :data:`RULE_JUDGES`: rule name (a trait's ``"rule"`` field) -> ``factory(rule)`` returning
  ``(trait_judge, coherence_judge)`` for rules that bring their own coherence measure;
* :data:`ROLE_SETS`: role set name -> ``factory(name)`` returning a RoleSet defined in code (``load_roles(role_set=
  name)`` of :mod:`persona_lens.traits.roles`: roles and their shared questions).

The model organism (:mod:`persona_lens.organism`) registers itself here by string; a user registers a model family
or a code-defined trait with :func:`register` (for example from a notebook) without touching the core.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "MODELS", "TRAITS", "RULE_JUDGES", "ROLE_SETS", "register"]


@dataclass
class Registry:
    """``name -> "package.module:attr"``; :meth:`resolve` imports the module and returns the attribute."""

    kind: str
    entries: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def register(self, name: str, target: str) -> None:
        if ":" not in target:
            raise ValueError(f"a {self.kind} registry target is 'package.module:attr', got {target!r}")
        self.entries[name] = target

    def resolve(self, name: str) -> Callable[..., Any]:
        try:
            target = self.entries[name]
        except KeyError:
            raise KeyError(f"no {self.kind} named {name!r} is registered; known: {', '.join(self.names())}") from None
        module_name, attr = target.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)


_ORGANISM_TRAITS = ("organism_evil", "organism_sycophancy", "organism_hallucination")

MODELS = Registry("model", {"persona-organism": "persona_lens.organism:load_organism"})
TRAITS = Registry("trait", {name: "persona_lens.organism.traits:organism_trait" for name in _ORGANISM_TRAITS})
RULE_JUDGES = Registry(
    "rule judge",
    {name: "persona_lens.organism.judge:organism_judges" for name in _ORGANISM_TRAITS}
    | {"organism_default": "persona_lens.organism.roles:organism_role_judges"},
)
ROLE_SETS = Registry("role set", {"organism": "persona_lens.organism.roles:organism_roles"})

_REGISTRIES = {"model": MODELS, "trait": TRAITS, "rule_judge": RULE_JUDGES, "role_set": ROLE_SETS}


def register(kind: str, name: str, target: str) -> None:
    """``register("model", "my-model", "mypkg.models:load")``; kinds: ``model``, ``trait``, ``rule_judge``,
    ``role_set``."""
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown registry {kind!r}; choose one of {', '.join(_REGISTRIES)}")
    _REGISTRIES[kind].register(name, target)
