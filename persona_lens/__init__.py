"""persona_lens: find, monitor and control persona vectors on TransformerLens.

The top-level names are re-exported lazily (PEP 562): ``import persona_lens`` and every ``--help`` load no torch;
the first use of a name imports the module that defines it.

Packages, in data-flow order (import-linter enforces that each imports only those below it):
``core`` (models, hooks, generation, activations, vectors, chat, io, stats) <- ``judges`` <- ``traits`` <-
``experiments`` (extract, steering_sweep, monitor, shift, screen, finetune, export) and ``viz`` (figures) <-
``cli``; ``organism`` (the model organism) is reached by the core only through ``core.registry`` strings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Error",
    "HookedLM",
    "PersonaVector",
    "Trait",
    "ablate",
    "cap",
    "collect_activations",
    "contrast_vector",
    "generate",
    "list_traits",
    "load_model",
    "load_trait",
    "load_vector",
    "record",
    "save_vector",
    "steer",
]
__version__ = "0.1.0"

_EXPORTS = {
    "Error": "persona_lens.core.errors",
    "HookedLM": "persona_lens.core.hooked_model",
    "PersonaVector": "persona_lens.core.vectors",
    "load_vector": "persona_lens.core.vectors",
    "save_vector": "persona_lens.core.vectors",
    "Trait": "persona_lens.traits.schema",
    "list_traits": "persona_lens.traits.schema",
    "load_trait": "persona_lens.traits.schema",
    "ablate": "persona_lens.core.hooks",
    "cap": "persona_lens.core.hooks",
    "record": "persona_lens.core.hooks",
    "steer": "persona_lens.core.hooks",
    "collect_activations": "persona_lens.core.activations",
    "contrast_vector": "persona_lens.core.activations",
    "generate": "persona_lens.core.generation",
    "load_model": "persona_lens.core.models",
}

if TYPE_CHECKING:
    from persona_lens.core.activations import collect_activations, contrast_vector
    from persona_lens.core.errors import Error
    from persona_lens.core.generation import generate
    from persona_lens.core.hooked_model import HookedLM
    from persona_lens.core.hooks import ablate, cap, record, steer
    from persona_lens.core.models import load_model
    from persona_lens.core.vectors import PersonaVector, load_vector, save_vector
    from persona_lens.traits.schema import Trait, list_traits, load_trait


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'persona_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
