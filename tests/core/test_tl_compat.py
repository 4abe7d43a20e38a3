"""The TransformerBridge KV-cache workaround: the bug without the patch, the fix with it."""

import pytest
import torch

from persona_lens.core import tl_compat


def _bridge_generate(bridge, ids, use_cache):
    with torch.no_grad():
        out = bridge.generate(ids, max_new_tokens=8, do_sample=False, use_past_kv_cache=use_cache, verbose=False)
    return out[0, ids.shape[1] :].tolist()


def _prompt(model):
    return model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]


@pytest.mark.slow
def test_bridge_cache_is_broken_without_the_patch_and_fixed_with_it(smollm2):
    bridge = smollm2.to_bridge()  # applies the patch
    ids = _prompt(smollm2)
    uncached = _bridge_generate(bridge, ids, use_cache=False)
    assert smollm2.tokenizer.decode(uncached).startswith("The capital of France is Paris")
    tl_compat.unpatch_bridge_kv_cache()
    try:
        assert not tl_compat.bridge_kv_cache_is_patched()
        broken = _bridge_generate(bridge, ids, use_cache=True)
        assert broken != uncached  # the upstream bug: each cached step attends only to itself
    finally:
        tl_compat.patch_bridge_kv_cache()
    assert tl_compat.bridge_kv_cache_is_patched()
    assert _bridge_generate(bridge, ids, use_cache=True) == uncached


def test_patched_bridge_cache_matches_uncached_on_tiny_models(tiny_model):
    bridge = tiny_model.to_bridge()
    ids = _prompt(tiny_model)
    assert _bridge_generate(bridge, ids, use_cache=True) == _bridge_generate(bridge, ids, use_cache=False)


def test_patch_is_idempotent():
    tl_compat.patch_bridge_kv_cache()
    first = tl_compat._load_attention_bridge()._update_kv_cache
    tl_compat.patch_bridge_kv_cache()
    assert tl_compat._load_attention_bridge()._update_kv_cache is first
