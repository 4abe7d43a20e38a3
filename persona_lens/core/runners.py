"""Reading the runner: how many tokens the KV cache holds and where the prompt ends, in anyone's forward loop.

A residual hook sees ``[batch, pos, d_model]`` and nothing else: on a cached decoding step that is one column, and
which absolute position it holds depends on the runner. Our own runners (:func:`persona_lens.generate`, activation
reading, the compiled decoder) publish it as a :class:`~persona_lens.core.hooks.TokenLayout`. Everywhere else a
:class:`RunnerReader` reads it from the forward call itself, exactly:

* the KV cache passed to the forward: an HF ``Cache`` (``get_seq_length()`` or ``cache_position``) for a
  :class:`~persona_lens.core.hooked_model.HookedLM`'s HF model and a ``TransformerBridge``; a TransformerLens 3.x
  ``past_kv_cache`` (its entries' key length) for a ``HookedTransformer``;
* left padding from the ``attention_mask`` passed (or, on a ``HookedTransformer``, the mask TransformerLens
  derives from pad tokens itself);
* where the prompt ends: a forward with an empty cache starts new rows, whose prompt is that forward. Inside a
  ``generate`` call of the model (HF ``generate``, ``TransformerBridge.generate``, ``HookedTransformer.generate``,
  wrapped while persona_lens hooks are installed) only the first forward is the prompt: uncached generation re-runs
  prompt + reply, and positions mean the same as with the cache. A cached forward continues the rows it extends:
  the same cache object (where the runner hands it back) holding exactly the tokens this reader saw.

What cannot be read is never guessed: a cached forward whose earlier tokens the reader did not see has known
absolute positions (from the cache length) but no known prompt, and a position mode that needs the prompt raises
there, naming the fixes (``positions="all"``, or run inside :func:`persona_lens.core.hooks.token_layout`).

The reader wraps the ``forward`` and ``generate`` methods of the model's instances (instance attributes, restored
when the last persona_lens hook is removed): TransformerLens 3.x calls ``self.forward(...)`` directly, which no
module hook would see.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from persona_lens.core.errors import Error

__all__ = [
    "RunnerReader",
    "ReadForward",
    "UnreadablePositions",
    "attach_reader",
    "detach_reader",
    "read_forward",
    "forget_reader_in_copy",
]


class UnreadablePositions(Error, ValueError):
    """A hook needs positions that the runner does not tell (see :mod:`persona_lens.core.runners`)."""


_FIX = (
    "use positions='all' (steering, ablation, capping), or run the forward inside "
    "persona_lens.core.hooks.token_layout(TokenLayout(pad_lengths, prompt_lengths, past_length))"
)


@dataclass
class ReadForward:
    """What a reader knows of the forward now running, resolved against the residual's shape by the first hook."""

    past_length: int
    mask: Tensor | None
    """The 2D attention mask passed to the forward (``[batch, past + pos]`` or ``[batch, pos]``), if any."""
    prompt_lengths: Tensor | None
    """Real prompt tokens per row, once known (continuations); None: this forward is the prompt (``new``) or
    the prompt is unknown (``unknown_prompt`` says why)."""
    pad_lengths: Tensor | None
    new: bool
    unknown_prompt: str | None = None
    reader: RunnerReader | None = field(default=None, repr=False)
    shape: tuple[int, int] | None = None
    layout: Any = field(default=None, repr=False)
    """The TokenLayout the hooks built from this read (shared by every hooked layer of the forward)."""
    _resolved: tuple[Any, ...] | None = field(default=None, repr=False)

    def resolve(
        self, batch: int, seq_len: int, device: torch.device
    ) -> tuple[Int[Tensor, " batch"], Int[Tensor, " batch"] | None, int]:
        """``(pad_lengths, prompt_lengths or None, past_length)`` for a residual of ``[batch, seq_len]``."""
        if self._resolved is not None:
            if self._resolved[0] != (batch, seq_len):
                raise UnreadablePositions(
                    f"one forward ran hooks on residuals of shape [{batch}, {seq_len}] and "
                    f"{list(self._resolved[0])}; persona_lens cannot place both: {_FIX}"
                )
            return self._resolved[1]
        pads = self._pads(batch, seq_len)
        prompt = self.prompt_lengths
        if self.new:
            prompt = seq_len - pads
        elif prompt is not None and prompt.shape[0] != batch:
            raise UnreadablePositions(
                f"this cached forward has {batch} rows but its prompt had {prompt.shape[0]}: "
                f"persona_lens cannot match them: {_FIX}"
            )
        result = (pads.to(device), None if prompt is None else prompt.to(device), self.past_length)
        self._resolved = ((batch, seq_len), result)
        if self.reader is not None:
            self.reader._seen(self, batch, seq_len, pads, prompt)
        return result

    def _pads(self, batch: int, seq_len: int) -> Tensor:
        if self.mask is not None:
            mask = self.mask
            widths = (seq_len, self.past_length + seq_len)
            if not torch.is_tensor(mask) or mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] not in widths:
                shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
                raise UnreadablePositions(
                    f"the attention mask has shape {shape} for {self.past_length} cached and {seq_len} "
                    f"new tokens in {batch} rows; persona_lens reads a 2D [batch, cached + new] mask: {_FIX}"
                )
            real = mask.detach().to("cpu").bool()
            if mask.shape[1] == seq_len and self.past_length:
                if self.pad_lengths is None:
                    raise UnreadablePositions(
                        f"the attention mask covers only the {seq_len} new tokens and the "
                        f"padding of the {self.past_length} cached ones is unknown: {_FIX}"
                    )
                return self.pad_lengths.cpu()
            pads = (real.long().cumsum(-1) == 0).sum(-1)
            after = torch.arange(real.shape[1])[None, :] >= pads[:, None]
            if bool((after & ~real).any()):
                raise UnreadablePositions(
                    "the attention mask has padding after a real token (right padding or "
                    f"gaps); persona_lens positions count left padding only: {_FIX}"
                )
            return pads
        if self.pad_lengths is not None:
            if self.pad_lengths.shape[0] != batch:
                raise UnreadablePositions(
                    f"this forward has {batch} rows but its prompt had {self.pad_lengths.shape[0]}: {_FIX}"
                )
            return self.pad_lengths.cpu()
        return torch.zeros(batch, dtype=torch.long)


_READ: contextvars.ContextVar[ReadForward | None] = contextvars.ContextVar("persona_lens_read", default=None)
EXPLICIT_LAYOUT: contextvars.ContextVar[Any] = contextvars.ContextVar("persona_lens_layout", default=None)
"""The layout our own runners publish (:func:`persona_lens.core.hooks.token_layout`): when set, nothing is read."""


def read_forward() -> ReadForward | None:
    """The forward a reader is reading now (None outside a read forward)."""
    return _READ.get()


@dataclass
class _Rows:
    """The rows a reader saw last: their prompt, padding, and how many tokens their cache holds."""

    batch: int
    pad_lengths: Tensor
    prompt_lengths: Tensor
    total: int
    cache_id: int | None


class RunnerReader:
    """Reads one model's forwards (see the module docstring); one per model, shared by its persona_lens hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.users = 0
        self.rows: _Rows | None = None
        self.generating = 0
        self._depth = 0
        self._patched: list[tuple[Any, str, Callable[..., Any], bool]] = []
        kind, forward_owner = _forward_owner(model)
        self.kind = kind
        self._wrap(forward_owner, "forward", self._forward_wrapper)
        for owner in _generate_owners(model):
            self._wrap(owner, "generate", self._generate_wrapper)

    # ------------------------------------------------------------------------------- wrapping and unwrapping
    def _wrap(self, owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        had_own = name in owner.__dict__
        original = getattr(owner, name)
        wrapper = make(original)
        wrapper._persona_lens_reader = self  # type: ignore[attr-defined]
        object.__setattr__(owner, name, wrapper)
        self._patched.append((owner, name, original, had_own))

    def unwrap(self) -> None:
        while self._patched:
            owner, name, original, had_own = self._patched.pop()
            current = owner.__dict__.get(name)
            if getattr(current, "_persona_lens_reader", None) is not self:
                continue  # someone wrapped it after us: leave theirs (ours passes through once unwrapped)
            if had_own:
                object.__setattr__(owner, name, original)
            else:
                del owner.__dict__[name]
        self.rows = None

    @property
    def active(self) -> bool:
        return bool(self._patched)

    def _forward_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling() or not self.active or self._depth or _explicit_layout():
                return original(*args, **kwargs)
            self._depth += 1
            read = self._read(args, kwargs)
            token = _READ.set(read)
            try:
                out = original(*args, **kwargs)
                self._finish(read, kwargs, out)
                return out
            finally:
                _READ.reset(token)
                self._depth -= 1

        return forward

    def _generate_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def generate(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            outer = (self.generating, self.rows)
            self.generating += 1
            self.rows = None  # the first forward of this call is its prompt
            try:
                return original(*args, **kwargs)
            finally:
                self.generating, self.rows = outer[0], None

        return generate

    # ---------------------------------------------------------------------------------------------- reading
    def _read(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ReadForward:
        read = self._read_call(args, kwargs)
        read.shape = _call_facts(self.kind, self.model, args, kwargs)[4]
        return read

    def _read_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ReadForward:
        past, cache, mask, tokens, shape = _call_facts(self.kind, self.model, args, kwargs)
        rows = self.rows
        if past == 0:
            if self.generating and rows is not None:  # uncached generation: prompt + reply so far
                return ReadForward(0, mask, rows.prompt_lengths, rows.pad_lengths, new=False, reader=self)
            if mask is None and tokens is not None:
                mask = _derived_mask(self.kind, self.model, tokens, kwargs)
            return ReadForward(0, mask, None, None, new=True, reader=self)
        why = None
        if rows is None:
            why = "its earlier tokens ran while no persona_lens hook was installed on this model, or in another runner"
        elif rows.total != past:
            why = f"the cache holds {past} tokens but the rows this model ran last hold {rows.total}"
        elif cache is not None and rows.cache_id is not None and id(cache) != rows.cache_id and not self.generating:
            why = "the cache passed is not the one the earlier forward of these rows filled"
        if why is not None:
            pads = None if rows is None or rows.total != past else rows.pad_lengths
            return ReadForward(
                past,
                mask,
                None,
                pads,
                new=False,
                reader=self,
                unknown_prompt=f"a cached forward ({past} tokens in the cache) whose prompt "
                f"persona_lens did not see: {why}",
            )
        assert rows is not None
        return ReadForward(past, mask, rows.prompt_lengths, rows.pad_lengths, new=False, reader=self)

    def _seen(self, read: ReadForward, batch: int, seq_len: int, pads: Tensor, prompt: Tensor | None) -> None:
        if prompt is None:
            self.rows = None
            return
        self.rows = _Rows(batch, pads.cpu(), prompt.cpu(), read.past_length + seq_len, None)

    def _finish(self, read: ReadForward, kwargs: dict[str, Any], out: Any) -> None:
        if read._resolved is None:  # no hook asked (none reached, or none needs positions): keep the rows in step
            try:
                if read.shape is None:
                    raise UnreadablePositions("the input's shape is unknown")
                read.resolve(read.shape[0], read.shape[1], torch.device("cpu"))
            except UnreadablePositions:
                self.rows = None
                return
        if self.rows is not None:
            self.rows.cache_id = _cache_id(self.kind, kwargs, out)


def _explicit_layout() -> bool:
    return EXPLICIT_LAYOUT.get() is not None


def _forward_owner(model: nn.Module) -> tuple[str, Any]:
    """Which module's forward to read, and how to read its arguments."""
    hf = getattr(model, "hf_model", None) or getattr(model, "original_model", None)  # HookedLM, TransformerBridge
    if hf is not None and hasattr(hf, "config") and hasattr(hf, "get_decoder"):
        return "hf", hf.get_decoder()
    if _is_hooked_transformer(model):
        return "tl3", model
    if type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model"):
        return "bridge", model
    raise UnreadablePositions(f"persona_lens cannot read how {type(model).__name__} runs its forwards")


def _generate_owners(model: nn.Module) -> list[Any]:
    owners = []
    if callable(getattr(model, "generate", None)):
        owners.append(model)
    for attr in ("hf_model", "original_model"):
        inner = getattr(model, attr, None)
        if inner is not None and callable(getattr(inner, "generate", None)):
            owners.append(inner)
    return owners


def _is_hooked_transformer(model: Any) -> bool:
    return any(cls.__name__ == "HookedTransformer" for cls in type(model).__mro__)


def _first(args: tuple[Any, ...], kwargs: dict[str, Any], *names: str) -> Any:
    for name in names:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return args[0] if args else None


def _call_facts(
    kind: str, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, Any, Any, Tensor | None, tuple[int, int] | None]:
    """``(tokens in the cache, the cache, the attention mask or None, integer input tokens or None,
    (batch, new tokens) or None)``."""
    mask = kwargs.get("attention_mask")
    if kind == "tl3":
        cache = kwargs.get("past_kv_cache")
        past = int(cache.entries[0].past_keys.shape[1]) if cache is not None and cache.entries else 0
        inputs = _first(args, kwargs, "input", "tokens")
        previous = getattr(cache, "previous_attention_mask", None)
        if (
            past
            and torch.is_tensor(mask)
            and torch.is_tensor(previous)
            and previous.shape[1] == past
            and mask.dim() == 2
            and torch.is_tensor(inputs)
            and mask.shape[1] == inputs.shape[1]
        ):
            mask = torch.cat([previous.to(mask.device, mask.dtype), mask], dim=1)  # TL 3.x: the new tokens' mask
    else:
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = kwargs.get("cache")
        position = kwargs.get("cache_position")
        if position is not None and torch.is_tensor(position) and position.numel():
            past = int(position.reshape(-1)[0])
        elif cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        else:
            past = 0
        inputs = _first(args, kwargs, "input_ids", "inputs_embeds", "input")
    tokens = inputs if torch.is_tensor(inputs) and not inputs.is_floating_point() else None
    shape = (int(inputs.shape[0]), int(inputs.shape[1])) if torch.is_tensor(inputs) and inputs.dim() >= 2 else None
    return past, cache, mask, tokens, shape


def _derived_mask(kind: str, model: Any, tokens: Tensor, kwargs: dict[str, Any]) -> Tensor | None:
    """The mask a HookedTransformer derives itself from pad tokens when none is passed (left padding)."""
    if kind != "tl3" or tokens.dim() != 2 or tokens.shape[0] < 2 or getattr(model, "tokenizer", None) is None:
        return None
    padding_side = kwargs.get("padding_side") or getattr(model.tokenizer, "padding_side", "right")
    if padding_side != "left":
        return None
    from transformer_lens import utils

    prepend_bos = kwargs.get("prepend_bos")
    if not isinstance(prepend_bos, bool):
        prepend_bos = bool(getattr(model.cfg, "default_prepend_bos", True))
    return utils.get_attention_mask(model.tokenizer, tokens, prepend_bos)


def _cache_id(kind: str, kwargs: dict[str, Any], out: Any) -> int | None:
    if kind == "tl3":
        cache = kwargs.get("past_kv_cache")
    else:
        cache = getattr(out, "past_key_values", None)
        if cache is None:
            cache = getattr(out, "cache", None)
        if cache is None:
            cache = kwargs.get("past_key_values")
        if cache is None:
            cache = kwargs.get("cache")
    return None if cache is None else id(cache)


# ------------------------------------------------------------------------------------------------ registry

_ATTR = "_persona_lens_reader"


def attach_reader(model: Any) -> RunnerReader | None:
    """The model's reader (made on first use; one more user); None for a model persona_lens cannot read."""
    reader = model.__dict__.get(_ATTR)
    if reader is None:
        try:
            reader = RunnerReader(model)
        except UnreadablePositions:
            return None
        model.__dict__[_ATTR] = reader
    reader.users += 1
    return reader


def detach_reader(model: Any) -> None:
    """One user fewer; the last one restores the model's methods."""
    reader = model.__dict__.get(_ATTR)
    if reader is None:
        return
    reader.users -= 1
    if reader.users <= 0:
        reader.unwrap()
        del model.__dict__[_ATTR]


def forget_reader_in_copy(copy: nn.Module) -> None:
    """Drop the reader's method wrappers that a deep copy (``HookedLM.to_bridge``) took over from the original."""
    for module in copy.modules():
        for name in ("forward", "generate"):
            value = module.__dict__.get(name)
            if getattr(value, "_persona_lens_reader", None) is not None:
                del module.__dict__[name]
        module.__dict__.pop(_ATTR, None)
