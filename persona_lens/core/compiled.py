"""Compiled static-cache decoding: the fast path for batch-1 / small-batch steered generation.

``persona_lens.generate(..., compile=True)`` runs the prompt eagerly into a preallocated ``StaticCache`` and
every later token through one ``torch.compile``-d step (CUDA graphs on a GPU), with whatever persona_lens or
TransformerLens hooks are installed traced into the graph. Three things make that both fast and correct:

* Nothing a hook reads changes as a Python value from step to step. Shapes are static (the cache and the attention
  mask are allocated for the whole reply, in buckets of :data:`LENGTH_BUCKET` tokens), and the runner publishes
  each step's cache length as a tensor (``TokenLayout.past_length``) instead of an int, so position modes and
  windows mean exactly what they mean in eager decoding without a recompile per step.
* Hook changes recompile. By default ``torch.compile`` does not guard on module hooks, so a graph compiled with
  one set of hooks would silently keep them after they were removed (tested). The step is traced and run with
  hook guards on: installing, removing or changing a hook triggers a recompile (seconds on a 7B model), and going
  back to an earlier set of hooks reuses its graph. Keep hooks installed across calls to pay compilation once.
* One cache and one compiled step per model and shape are reused across calls (new cache tensors would mean new
  CUDA graphs).

Models with sliding-window layers (Gemma-2, Mistral with a window) are refused with a clear error: transformers'
static sliding-window cache keeps its length as a Python int, which would recompile every step.

Hooks that do host-side work (``RecordProjection`` stores projections on the CPU) still work: the compiler breaks
the graph around them and runs them eagerly.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from persona_lens.core.hooked_model import HookedLM, positions_from_mask
from persona_lens.core.hooks import TokenLayout

__all__ = ["LENGTH_BUCKET", "RECOMPILE_LIMIT", "StaticDecoder", "check_compilable", "static_decoder"]

LENGTH_BUCKET = 256
"""Static caches are allocated for prompt + reply rounded up to a multiple of this, so that calls with similar
lengths share one compiled graph."""


RECOMPILE_LIMIT = 64
"""Graphs kept per model before torch.compile falls back to eager decoding (one per set of hooks and shape)."""


def _bucket(length: int) -> int:
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


@dataclass
class _Compiled:
    step: Callable[..., Any]
    caches: dict[tuple[int, int], Any]


def _compiled_for(model: HookedLM, backend: str | Callable[..., Any]) -> _Compiled:
    """The model's compiled decoding step for ``backend`` (made once, kept on the model)."""
    store: dict[str | Callable[..., Any], _Compiled] = model.__dict__.setdefault("_persona_lens_compiled", {})
    if backend not in store:

        def decode_step(
            input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache_position: Tensor, cache: Any
        ) -> Tensor:
            logits, _ = model(
                input_ids, attention_mask, position_ids, cache=cache, use_cache=True, cache_position=cache_position
            )
            return logits

        mode = "reduce-overhead" if backend == "inductor" and model.device.type == "cuda" else None
        step = torch.compile(
            _own_code(decode_step, f"decode_step_{len(store)}_{id(model):x}"), backend=backend, mode=mode, dynamic=False
        )
        store[backend] = _Compiled(step, {})
    return store[backend]


def _own_code(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own. torch.compile keeps graphs, checks guards and counts recompiles per
    code object: one per model and backend keeps models from sharing one recompile limit and one guard chain."""
    if sys.version_info >= (3, 11):  # co_qualname is new in 3.11
        code = fn.__code__.replace(co_name=name, co_qualname=name)
    else:
        code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


class StaticDecoder:
    """One batch's decoding on a static KV cache: an eager prefill, then compiled one-token steps."""

    def __init__(
        self,
        model: HookedLM,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"],
        max_new_tokens: int,
        layout: TokenLayout,
        backend: str | Callable[..., Any] = "inductor",
    ) -> None:
        from transformers import StaticCache

        self.model = model
        self.layout = layout
        batch, prompt = input_ids.shape
        self.prompt = prompt
        self.max_len = _bucket(prompt + max_new_tokens)
        compiled = _compiled_for(model, backend)
        key = (batch, self.max_len)
        if key not in compiled.caches:
            config: Any = model.hf_model.config
            compiled.caches[key] = StaticCache(config=config, max_cache_len=self.max_len)
        self.cache = compiled.caches[key]
        self.cache.reset()
        self._step = compiled.step
        device = input_ids.device
        self.input_ids = input_ids
        self.mask = torch.zeros(batch, self.max_len, dtype=attention_mask.dtype, device=device)
        self.mask[:, :prompt] = attention_mask
        self.position_ids = positions_from_mask(attention_mask)
        self.indices = torch.arange(self.max_len, device=device)  # cache positions, sliced without a host copy

    def prefill(self) -> Float[Tensor, "batch vocab"]:
        """Run the prompt (eagerly: one call per batch, and hooks see ordinary prompt positions)."""
        self.layout.begin_forward(past_length=0)
        cache_position = self.indices[: self.prompt]
        logits, _ = self.model(
            self.input_ids,
            self.mask,
            self.position_ids,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            cache_position=cache_position,
        )
        return logits[:, -1]

    def step(self, tokens: Int[Tensor, " batch"], index: int) -> Float[Tensor, "batch vocab"]:
        """Feed the tokens at sequence index ``index`` (``prompt, prompt + 1, ...``) through the compiled step."""
        if index >= self.max_len:
            raise ValueError(f"static cache of {self.max_len} tokens is full")
        self.mask[:, index] = 1
        self.position_ids = self.position_ids[:, -1:] + 1
        cache_position = self.indices[index : index + 1]
        self.layout.begin_forward(past_length=cache_position)  # cache length as a tensor: no recompile per step
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed (cloned)
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, recompile_limit=RECOMPILE_LIMIT):
            logits = self._step(tokens[:, None], self.mask, self.position_ids, cache_position, self.cache)
        return logits[:, -1].clone()  # CUDA graphs overwrite their outputs on the next replay


def check_compilable(model: HookedLM) -> None:
    """Refuse models whose static cache changes a Python value every step (each step would recompile)."""
    config: Any = model.hf_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    kinds = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if kinds - {"full_attention"}:
        raise ValueError(
            f"compile=True needs global attention on every layer; {model.cfg.model_name} has "
            f"{', '.join(sorted(kinds - {'full_attention'}))} layers, whose static cache in transformers tracks its "
            "length as a Python int (a recompile every step). Use compile=False for this model."
        )


def static_decoder(
    model: HookedLM,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    layout: TokenLayout,
    compile: bool | str | Callable[..., Any],
) -> StaticDecoder:
    """A :class:`StaticDecoder`; ``compile`` is True (inductor, CUDA graphs on GPU) or a torch.compile backend."""
    check_compilable(model)
    if compile is False:
        raise ValueError("static_decoder needs compile=True or a torch.compile backend")
    backend = "inductor" if compile is True else compile
    return StaticDecoder(model, input_ids, attention_mask, max_new_tokens, layout, backend)
