"""Where persona vectors are *read*: residual-stream activations at every layer, reduced on the fly.

For each conversation we keep, at every layer ``l`` (0 = embeddings, ``l`` = output of block ``l``):

* ``response_mean``  mean over response tokens (what the paper's vectors are built from),
* ``prompt_mean``    mean over prompt tokens,
* ``last_prompt``    the last prompt token (what monitoring and finetuning-shift read).

The reduction happens inside the hooks, in float32, under ``torch.no_grad``: a batch never holds more than one
layer's activations beyond what the forward pass itself needs, and the pass stops after the last layer asked for
(no logits are computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from persona_lens.core.chat import EncodedConversation, Message, TokenBatch, collate, encode_conversation
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import TokenLayout, install_hooks, token_layout
from persona_lens.core.layers import hook_name
from persona_lens.core.norms import median_residual_norms, model_device
from persona_lens.core.vectors import REDUCTIONS, PersonaVector

__all__ = [
    "Activations",
    "REDUCTIONS",
    "collect_activations",
    "reduce_batch",
    "median_residual_norms",
    "ContrastItem",
    "encode_contrast_item",
    "contrast_vector",
]


@dataclass
class Activations:
    """Per-conversation activations ``[n, n_layers + 1, d_model]`` (float32, CPU) for each reduction asked for."""

    response_mean: Float[Tensor, "n layer d_model"] | None
    prompt_mean: Float[Tensor, "n layer d_model"] | None
    last_prompt: Float[Tensor, "n layer d_model"] | None
    n_response_tokens: Int[Tensor, " n"]

    def get(self, positions: str) -> Float[Tensor, "n layer d_model"]:
        """The activations for ``positions`` in ``("response", "prompt", "last_prompt")``."""
        attr = {"response": "response_mean", "prompt": "prompt_mean", "last_prompt": "last_prompt"}.get(positions)
        if attr is None:
            raise ValueError(f"unknown positions {positions!r}; use one of {REDUCTIONS}")
        value = getattr(self, attr)
        if value is None:
            raise ValueError(f"{positions!r} activations were not collected (pass reductions=... to collect them)")
        return value

    def __len__(self) -> int:
        return int(self.n_response_tokens.shape[0])


class _Reducer:
    """A TransformerLens hook that reduces one layer's residual stream into preallocated float32 buffers."""

    def __init__(self, layer: int, batch: TokenBatch, out: dict[str, Tensor]) -> None:
        self.layer = layer
        self.out = out
        self.batch = batch
        self.means = [r for r in ("response", "prompt") if r in out]
        masks = {"response": batch.response_mask, "prompt": batch.prompt_mask}
        # one weight row per mean: a single contraction gives every mean without copying the residual stream
        self.weights: Float[Tensor, "batch mean pos"] | None = (
            torch.stack([_mean_weights(masks[r]) for r in self.means], dim=1) if self.means else None
        )

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> None:
        resid32 = resid.float()
        if self.weights is not None:
            means = einops.einsum(
                _on(self.weights, resid32.device), resid32, "batch mean pos, batch pos d_model -> batch mean d_model"
            )
            for k, reduction in enumerate(self.means):
                self.out[reduction][:, self.layer] = means[:, k]
        if "last_prompt" in self.out:
            rows = torch.arange(resid.shape[0], device=resid.device)
            self.out["last_prompt"][:, self.layer] = resid32[rows, _on(self.batch.last_prompt_index, resid.device)]
        return None


def _on(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (blocks of a split model run on different devices; no copy when already there)."""
    return tensor if tensor.device == device else tensor.to(device)


def _mean_weights(mask: Tensor) -> Float[Tensor, "batch pos"]:
    weights = mask.float()
    return weights / weights.sum(-1, keepdim=True).clamp(min=1.0)


@torch.no_grad()
def reduce_batch(
    model: Any,
    batch: TokenBatch,
    reductions: Sequence[str] = REDUCTIONS,
    layers: Sequence[int] | None = None,
    row_index: Sequence[int] | None = None,
) -> dict[str, Float[Tensor, "batch layer d_model"]]:
    """Run one batch and return ``{reduction: [batch, n_layers + 1, d_model]}`` (rows of ``layers`` filled)."""
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers + 1)) if layers is None else sorted(set(layers))
    shape = (batch.input_ids.shape[0], n_layers + 1, int(model.cfg.d_model))
    device = batch.input_ids.device
    out = {r: torch.zeros(shape, dtype=torch.float32, device=device) for r in reductions}
    hooks = [(hook_name(lay, n_layers), _Reducer(lay, batch, out)) for lay in layers]
    rows = None if row_index is None else torch.tensor(list(row_index))
    layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=rows)
    with install_hooks(model, hooks), token_layout(layout):
        if isinstance(model, HookedLM):
            model.run_blocks(batch.input_ids, batch.attention_mask, stop_at_layer=max(layers))
        else:
            _run_transformer_lens(model, batch)
    return out


def _run_transformer_lens(model: Any, batch: TokenBatch) -> None:
    """Any TransformerLens model (HookedTransformer, TransformerBridge): rows one at a time, unpadded."""
    if batch.input_ids.shape[0] != 1 or bool((batch.pad_lengths != 0).any()):
        raise ValueError("a plain TransformerLens model runs one unpadded conversation per batch (batch_size=1)")
    model(batch.input_ids, return_type=None)


def collect_activations(
    model: Any,
    conversations: Sequence[EncodedConversation],
    *,
    reductions: Sequence[str] = REDUCTIONS,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "activations",
) -> Activations:
    """Residual activations of ``conversations`` at every layer (or ``layers``), reduced as asked.

    Batches are formed from conversations of similar length (less padding); results come back in input order
    and do not depend on ``batch_size``.
    """
    unknown = set(reductions) - set(REDUCTIONS)
    if unknown:
        raise ValueError(f"unknown reductions {sorted(unknown)}; choose from {REDUCTIONS}")
    if not isinstance(model, HookedLM):
        batch_size = 1
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    n = len(conversations)
    results = {r: torch.zeros((n, n_layers + 1, d_model), dtype=torch.float32) for r in reductions}
    order = sorted(range(n), key=lambda i: len(conversations[i].input_ids))
    pad_id = _pad_token_id(model)
    device = model_device(model)
    rows = None if layers is None else torch.tensor(sorted(set(layers)))  # copy only these layers off the device
    bar = tqdm(total=n, desc=desc, disable=not progress or n == 0, unit="conv")
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        batch = collate([conversations[i] for i in index], pad_id, device)
        reduced = reduce_batch(model, batch, reductions, layers, index)
        for r in reductions:
            if rows is None:
                results[r][index] = reduced[r].cpu()
            else:
                results[r][torch.tensor(index)[:, None], rows] = reduced[r][:, rows].cpu()
        bar.update(len(index))
    bar.close()
    counts = torch.tensor([c.response_end - c.response_start for c in conversations], dtype=torch.long)
    return Activations(
        response_mean=results.get("response"),
        prompt_mean=results.get("prompt"),
        last_prompt=results.get("last_prompt"),
        n_response_tokens=counts,
    )


def _pad_token_id(model: Any) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


ContrastItem = Union[str, Sequence[Message], EncodedConversation]  # noqa: UP007 (a runtime alias)
"""One contrast example: plain text, a chat conversation whose last message is the assistant's, or tokens."""


def encode_contrast_item(tokenizer: Any, item: ContrastItem) -> EncodedConversation:
    """Tokens of one contrast example and where its "response" lies.

    * a chat conversation (messages ending with an assistant turn): the chat template renders it, the assistant's
      reply is the response and the rest the prompt, exactly as in extraction (:func:`encode_conversation`);
    * plain text: tokenized as it is (the tokenizer's own special tokens); every token but a leading BOS is the
      response, and there is no prompt;
    * an :class:`EncodedConversation`: taken as given.
    """
    if isinstance(item, EncodedConversation):
        return item
    if isinstance(item, str):
        ids = list(tokenizer(item)["input_ids"])
        if not ids:
            raise ValueError(f"contrast text {item!r} has no tokens")
        start = 1 if len(ids) > 1 and ids[0] == getattr(tokenizer, "bos_token_id", None) else 0
        return EncodedConversation(tuple(ids), 0, start, len(ids))
    messages = list(item)
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise ValueError(
            "a contrast conversation is a list of chat messages ending with the assistant's reply "
            f"(the tokens averaged), got {str(item)[:80]!r}"
        )
    return encode_conversation(tokenizer, messages[:-1], messages[-1]["content"])


def contrast_vector(
    model: Any,
    positive: Sequence[ContrastItem],
    negative: Sequence[ContrastItem],
    *,
    trait: str = "contrast",
    positions: str = "response",
    batch_size: int = 8,
    progress: bool = False,
) -> PersonaVector:
    """A persona vector from your own contrast examples: mean activation of ``positive`` minus that of
    ``negative``, at every layer, each example first averaged over its ``positions``.

    The convention is extraction's (:mod:`persona_lens.experiments.extract`, without generation, judging or
    filtering): ``"response"`` averages the reply tokens (every token of a plain text), ``"prompt"`` the prompt
    tokens and ``"last_prompt"`` takes the last prompt token (those two need chat conversations, whose prompt is
    everything before the assistant's reply). The two sides may differ in size. Examples are items of
    :data:`ContrastItem` (see :func:`encode_contrast_item`)::

        vector = contrast_vector(model, ["Arr, me hearties!"], ["Hello, friends."], trait="pirate")
        with persona_lens.steer(model, vector, layer=20, coef=0.4): ...

    Args:
        model: A :class:`~persona_lens.core.hooked_model.HookedLM` (its tokenizer renders the examples).
        positive: Examples showing the trait: plain texts or chat conversations ending with the reply.
        negative: Examples not showing it.
        trait: The name stored in the vector.
        positions: ``"response"``, ``"prompt"`` or ``"last_prompt"`` (how each example is averaged).
        batch_size: Examples per forward pass.
        progress: Show a progress bar.

    Returns:
        A :class:`~persona_lens.core.vectors.PersonaVector`, ``[n_layers + 1, d_model]``.

    Raises:
        ValueError: An empty side, an unknown ``positions``, or a plain text where ``positions`` needs a prompt.

    Example:
        >>> import persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> vector = pl.contrast_vector(model, ["Arr, me hearties!", "Ahoy, matey!"],
        ...                             ["Hello, friends.", "Good morning."], trait="pirate")
        >>> vector.trait, tuple(vector.vectors.shape)
        ('pirate', (5, 64))
    """
    if positions not in REDUCTIONS:
        raise ValueError(f"unknown positions {positions!r}; use one of {REDUCTIONS}")
    if not positive or not negative:
        raise ValueError(
            f"contrast_vector needs examples on both sides ({len(positive)} positive, {len(negative)} negative)"
        )
    if isinstance(positive, str) or isinstance(negative, str):
        raise ValueError("positive and negative are lists of examples; wrap a single text in a list")
    tokenizer = getattr(model, "tokenizer", None)
    sides = []
    for name, items in (("positive", positive), ("negative", negative)):
        encoded = [encode_contrast_item(tokenizer, item) for item in items]
        if positions != "response" and any(e.prompt_length == 0 for e in encoded):
            raise ValueError(
                f"positions={positions!r} needs a prompt, but a {name} example is plain text; give chat "
                "conversations (messages ending with the assistant's reply) or use positions='response'"
            )
        sides.append(
            collect_activations(
                model,
                encoded,
                reductions=(positions,),
                batch_size=batch_size,
                progress=progress,
                desc=f"contrast: {name}",
            ).get(positions)
        )
    settings = {"source": "contrast_vector", "positions": positions}
    return PersonaVector.from_activations(trait, str(model.cfg.model_name), sides[0], sides[1], positions, settings)
