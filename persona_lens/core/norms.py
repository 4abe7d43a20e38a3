"""The residual stream's scale: what *relative* steering coefficients are relative to.

A raw coefficient ``a`` adds ``a v_l`` at layer ``l`` (the paper's units). Its relative size is

    r = a |v_l| / median |h_l|

where ``median |h_l|`` is the median norm of the residual stream at layer ``l`` over the tokens of some chat prompts
(the first token of each prompt left out: it often carries an outsized attention-sink norm that says nothing about
the typical scale). Relative coefficients compare across layers and models; the steering sweep reports both, and
:func:`persona_lens.core.hooks.steer` takes relative coefficients unless told ``raw=True``. The conversion lives
here once (:func:`raw_coefficient`, :func:`relative_coefficient`), for the sweep and ``steer`` alike.

Norms are measured one prompt at a time, unpadded, with TransformerLens' own ``model.hooks(...)``: no padding means
no token layout is needed, so any persona_lens hook that is installed meanwhile sees a plain one-prompt forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.chat import EncodedConversation, encode_generated, encode_prompt, make_messages
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.layers import hook_name

__all__ = [
    "REFERENCE_QUESTIONS",
    "reference_conversations",
    "median_residual_norms",
    "raw_coefficient",
    "relative_coefficient",
    "model_device",
]

#: Neutral everyday questions: the prompts whose residual norms relative coefficients refer to by default.
REFERENCE_QUESTIONS = (
    "What do you like to eat for breakfast?",
    "How do I make a cup of tea?",
    "Can you recommend a good book to read?",
    "What is the best way to learn a new language?",
    "How does a bicycle work?",
    "What should I pack for a weekend trip?",
    "Why is the sky blue?",
    "Tell me about your favourite season.",
)


def reference_conversations(model: Any, questions: Sequence[str] = REFERENCE_QUESTIONS) -> list[EncodedConversation]:
    """``questions`` as chat prompts (no system prompt) in ``model``'s chat template."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"{type(model).__name__} has no tokenizer to render the reference prompts with; measure "
            "median_residual_norms(model, conversations) on your own token ids, or pass raw "
            "coefficients (raw=True)"
        )
    return [encode_generated(encode_prompt(tokenizer, make_messages(q)), ()) for q in questions]


class _NormCollector:
    def __init__(self, out: list[Tensor]) -> None:
        self.out = out

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> None:
        self.out.append(resid[0, 1:].float().norm(dim=-1).cpu())  # the first token left out (attention sink)
        return None


@torch.no_grad()
def median_residual_norms(
    model: Any, conversations: Sequence[EncodedConversation] | None = None
) -> Float[Tensor, " layer"]:
    """The median norm of the residual stream at each layer (``[n_layers + 1]``) over the conversations' tokens.

    ``conversations`` default to :data:`REFERENCE_QUESTIONS` as chat prompts (:func:`reference_conversations`).
    The first token of each conversation is left out (an attention sink's norm says nothing about the typical
    scale). A prompt given several times counts once (the median is the same). Any TransformerLens model works.
    """
    if conversations is None:
        conversations = reference_conversations(model)
    if not conversations:
        raise ValueError("median_residual_norms needs at least one conversation")
    n_layers = int(model.cfg.n_layers)
    norms: dict[int, list[Tensor]] = {layer: [] for layer in range(n_layers + 1)}
    fwd_hooks = [(hook_name(layer, n_layers), _NormCollector(norms[layer])) for layer in norms]
    device = model_device(model)
    for input_ids in dict.fromkeys(c.input_ids for c in conversations):
        if len(input_ids) < 2:
            continue
        ids = torch.tensor([input_ids], dtype=torch.long, device=device)
        with model.hooks(fwd_hooks=fwd_hooks):
            if isinstance(model, HookedLM):
                model.run_blocks(ids)
            else:
                model(ids, return_type=None)
    if not norms[0]:
        raise ValueError("median_residual_norms needs a conversation of at least two tokens")
    return torch.stack([torch.cat(norms[layer]).median() for layer in range(n_layers + 1)])


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s weights (``model.device`` where it has one)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def raw_coefficient(
    relative: float | Tensor, vector_norm: float | Tensor, residual_norm: float | Tensor
) -> float | Tensor:
    """``a = r median|h_l| / |v_l|``: the raw coefficient whose added vector is ``r`` times the residual's median
    norm. A zero vector has no relative size (error)."""
    vector_norm = float(vector_norm)
    if not vector_norm > 0:
        raise ValueError(
            "the vector is zero at this layer, so a relative coefficient has no meaning there; pass a "
            "raw coefficient (raw=True) or use another layer"
        )
    factor = float(residual_norm) / vector_norm
    return relative * factor if isinstance(relative, Tensor) else float(relative) * factor


def relative_coefficient(
    raw: float | Tensor, vector_norm: float | Tensor, residual_norm: float | Tensor
) -> float | Tensor:
    """``r = a |v_l| / median|h_l|``, the inverse of :func:`raw_coefficient`."""
    factor = float(vector_norm) / float(residual_norm)
    return raw * factor if isinstance(raw, Tensor) else float(raw) * factor
