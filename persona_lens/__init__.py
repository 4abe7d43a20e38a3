"""persona_lens: find, monitor and control persona vectors on TransformerLens."""

from persona_lens.hooked_model import HookedLM
from persona_lens.models import load_model

__all__ = ["HookedLM", "load_model"]
__version__ = "0.1.0"
