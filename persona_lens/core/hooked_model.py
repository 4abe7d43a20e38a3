"""`HookedLM`: a Hugging Face causal LM with TransformerLens hook points on its residual stream.

It is a TransformerLens ``HookedRootModule``: ``model.hooks(fwd_hooks=[("blocks.3.hook_resid_post", fn)])``,
``add_hook``, ``run_with_cache`` and ``reset_hooks`` behave as on a ``HookedTransformer`` or ``TransformerBridge``,
and a hook function written for one runs unchanged on the others.

Why not run everything through ``TransformerBridge``? The bridge re-implements attention eagerly with dozens of
hook points per block, which costs 2x in decoding throughput, and with transformers >= 5.2x its KV cache is not
updated (see :mod:`persona_lens.core.tl_compat`). ``HookedLM`` runs the untouched Hugging Face model (SDPA, its own
KV cache) and exposes only the residual stream, where persona vectors are read and applied. For everything else,
:meth:`HookedLM.to_bridge` returns a ``TransformerBridge`` that shares these weights.

Hook points (see :mod:`persona_lens.core.layers` for how they map to our layer index):

* ``blocks.{i}.hook_resid_pre``  -- input of block ``i``  (``blocks.0.hook_resid_pre`` is layer 0, embeddings);
* ``blocks.{i}.hook_resid_post`` -- output of block ``i`` (layer ``i + 1``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from persona_lens.core.devices import find_decoder_layers, input_device

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["HookedLM", "ModelConfig", "find_decoder_layers", "share_weights_copy"]


@dataclass
class ModelConfig:
    """The few facts about a model that persona_lens needs (names follow TransformerLens' ``cfg``)."""

    model_name: str
    n_layers: int
    d_model: int
    architecture: str
    d_vocab: int


class _ResidHookPoint(HookPoint):
    """A hook point that wires itself into its Hugging Face block when its first hook is added.

    Blocks nobody ever hooked keep PyTorch's fast call path (a module with hooks takes a slower one, which costs
    a few percent of decoding throughput when every block has them).
    """

    def __init__(self, connect: Callable[[], None]) -> None:
        super().__init__()
        self._connect = connect

    def add_hook(self, *args: Any, **kwargs: Any) -> Any:
        self._connect()
        return super().add_hook(*args, **kwargs)


class _BlockHooks(nn.Module):
    def __init__(self, connect_pre: Callable[[], None], connect_post: Callable[[], None]) -> None:
        super().__init__()
        self.hook_resid_pre = _ResidHookPoint(connect_pre)
        self.hook_resid_post = _ResidHookPoint(connect_post)


def share_weights_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers are the very same tensors (no memory cost)."""
    memo: dict[int, Any] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def _fire(hook_point: HookPoint, x: Tensor) -> Tensor:
    # Calling an nn.Module costs microseconds; skip hook points nobody listens to (the decoding hot path).
    return hook_point(x) if hook_point._forward_hooks else x


class HookedLM(HookedRootModule):
    """A Hugging Face causal LM (``.hf_model``) plus its tokenizer, with residual-stream hook points."""

    def __init__(self, hf_model: nn.Module, tokenizer: Any, model_name: str | None = None) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self._layers = find_decoder_layers(hf_model)
        config: Any = hf_model.config  # Hugging Face configs carry their fields dynamically
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.cfg = ModelConfig(
            model_name=model_name or getattr(config, "name_or_path", None) or type(hf_model).__name__,
            n_layers=len(self._layers),
            d_model=text_config.hidden_size,
            architecture=(config.architectures or [type(hf_model).__name__])[0],
            d_vocab=text_config.vocab_size,
        )
        # PyTorch hooks on the HF blocks that fire our hook points: registered on first use, one per point.
        self._wiring: dict[tuple[int, str], Any] = {}
        self.blocks = nn.ModuleList(
            _BlockHooks(self._connector(i, "pre"), self._connector(i, "post")) for i in range(self.cfg.n_layers)
        )
        params = inspect.signature(hf_model.forward).parameters
        # transformers renamed `past_key_values` to `cache` (5.2x); speak whichever this version understands.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in params
        self.setup()

    # ----------------------------------------------------------------- wiring the hook points into HF blocks
    def _connector(self, index: int, kind: str) -> Callable[[], None]:
        def connect() -> None:
            if (index, kind) in self._wiring:
                return
            layer, point = self._layers[index], getattr(self.blocks[index], f"hook_resid_{kind}")
            if kind == "pre":
                handle = layer.register_forward_pre_hook(self._pre_hook(point), with_kwargs=True)
            else:
                handle = layer.register_forward_hook(self._post_hook(point))
            self._wiring[(index, kind)] = handle

        return connect

    @staticmethod
    def _pre_hook(hook_point: HookPoint) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not hook_point._forward_hooks:
                return None
            if args:
                return (hook_point(args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hook_point(kwargs["hidden_states"])
            return args, kwargs

        return pre_hook

    @staticmethod
    def _post_hook(hook_point: HookPoint) -> Callable[..., Any]:
        def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not hook_point._forward_hooks:
                return None
            if isinstance(output, tuple):
                return (hook_point(output[0]), *output[1:])
            return hook_point(output)

        return post_hook

    # ----------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (its execution device when accelerate placed the model)."""
        if getattr(self.hf_model, "hf_device_map", None):
            return input_device(self.hf_model)
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    # --------------------------------------------------------------------------------------------- running
    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        *,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        cache_position: Int[Tensor, " pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"] | tuple[Float[Tensor, "batch pos d_vocab"], Any]:
        """Run the model. Returns logits, or ``(logits, cache)`` when ``use_cache``.

        ``position_ids`` default to the count of real tokens before each position (right for left padding).
        ``logits_to_keep=k`` computes logits for the last ``k`` positions only (0 = all). ``cache_position``: the
        sequence indices these tokens take in a static cache (:mod:`persona_lens.core.compiled`).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, -input_ids.shape[1] :]
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": use_cache,
            self._cache_kwarg: cache,
        }
        if cache_position is not None:
            kwargs["cache_position"] = cache_position
        if self._has_logits_to_keep and logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.hf_model(**kwargs)
        logits = out.logits
        if logits_to_keep and not self._has_logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        if use_cache:
            new_cache = getattr(out, "cache", None)
            if new_cache is None:
                new_cache = out.past_key_values
            return logits, new_cache
        return logits

    def run_blocks(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        stop_at_layer: int | None = None,
    ) -> None:
        """Run the model for its hook side effects only, stopping after layer ``stop_at_layer`` if given.

        Used by activation collection: no logits are computed, and no block past ``stop_at_layer`` runs.
        """
        stop = _StopForward()
        handle = None
        if stop_at_layer is not None and stop_at_layer < self.cfg.n_layers:
            target = self._layers[stop_at_layer]  # block stop_at_layer+1 starts: we have what we need

            def raise_stop(module: nn.Module, args: Any, kwargs: Any) -> None:
                raise stop

            handle = target.register_forward_pre_hook(raise_stop, with_kwargs=True)
        try:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            hf: Any = self.hf_model  # Hugging Face methods are not visible on nn.Module
            base = hf.get_decoder() if hasattr(hf, "get_decoder") else None
            runner = base if base is not None else hf
            runner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                use_cache=False,
            )
        except _StopForward:
            pass
        finally:
            if handle is not None:
                handle.remove()

    def to_bridge(self) -> TransformerBridge:
        """A TransformerLens ``TransformerBridge`` over the same weights (no copy), for full circuit analysis.

        The bridge's KV-cache bug under transformers >= 5.2x is patched (:mod:`persona_lens.core.tl_compat`).
        """
        from transformer_lens.model_bridge import TransformerBridge

        from persona_lens.core.runners import forget_reader_in_copy
        from persona_lens.core.tl_compat import patch_bridge_kv_cache

        patch_bridge_kv_cache()
        twin = share_weights_copy(self.hf_model)
        forget_reader_in_copy(twin)  # the copy must not report its forwards to this model's reader
        twin_layers = find_decoder_layers(twin)
        for (index, _), handle in self._wiring.items():  # the copy must not fire this model's hook points
            layer = twin_layers[index]
            for hooks in (layer._forward_hooks, layer._forward_pre_hooks, layer._forward_pre_hooks_with_kwargs):
                hooks.pop(handle.id, None)
        # TransformerLens edits the tokenizer it is given (BOS, padding side): give it its own copy.
        return TransformerBridge.boot_transformers(
            self.cfg.model_name, hf_model=twin, tokenizer=copy.deepcopy(self.tokenizer), device=str(self.device)
        )


class _StopForward(Exception):
    pass


def positions_from_mask(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """Position ids that skip left padding: the number of real tokens before each position (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
