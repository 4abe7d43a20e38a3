"""The one place where persona_lens works around a TransformerLens bug.

TransformerLens 4.3's ``AttentionBridge._update_kv_cache`` looks for the KV cache under the keyword
``past_key_values`` (or ``layer_past``). transformers >= 5.2x renamed that keyword to ``cache`` in every decoder
layer and attention module, so the bridge never stores keys and values: each cached decoding step attends only to
itself, and ``bridge.generate(use_past_kv_cache=True)`` on SmolLM2 answers "The-----------" (so does
``bridge.original_model.generate``, since the bridge replaces the HF attention modules in place).

:func:`patch_bridge_kv_cache` makes the bridge also read ``cache``. It is idempotent and changes nothing when the
keyword is absent. ``tests/test_tl_compat.py`` shows the bug without the patch and the fix with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["patch_bridge_kv_cache", "bridge_kv_cache_is_patched"]

_PATCHED_FLAG = "_persona_lens_kv_cache_patch"


def _load_attention_bridge() -> Any:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return AttentionBridge


def bridge_kv_cache_is_patched() -> bool:
    return getattr(_load_attention_bridge()._update_kv_cache, _PATCHED_FLAG, False)


def patch_bridge_kv_cache() -> None:
    """Teach ``AttentionBridge._update_kv_cache`` the ``cache`` keyword of transformers >= 5.2x."""
    attention_bridge = _load_attention_bridge()
    original = attention_bridge._update_kv_cache
    if getattr(original, _PATCHED_FLAG, False):
        return

    def _update_kv_cache(self: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _PATCHED_FLAG, True)
    _update_kv_cache.__wrapped__ = original  # type: ignore[attr-defined]
    attention_bridge._update_kv_cache = _update_kv_cache


def unpatch_bridge_kv_cache() -> None:
    """Undo :func:`patch_bridge_kv_cache` (tests use it to show the bug)."""
    attention_bridge = _load_attention_bridge()
    current = attention_bridge._update_kv_cache
    if getattr(current, _PATCHED_FLAG, False):
        attention_bridge._update_kv_cache = current.__wrapped__
