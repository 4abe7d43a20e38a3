"""persona_lens: find, monitor and control persona vectors on TransformerLens."""

from persona_lens.activations import collect_activations
from persona_lens.generation import generate
from persona_lens.hooked_model import HookedLM
from persona_lens.hooks import ablate, cap, record, steer
from persona_lens.models import load_model
from persona_lens.traits import Trait, list_traits, load_trait
from persona_lens.vectors import PersonaVector, load_vector, save_vector

__all__ = [
    "HookedLM",
    "PersonaVector",
    "Trait",
    "ablate",
    "cap",
    "collect_activations",
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
