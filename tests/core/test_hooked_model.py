"""HookedLM is a TransformerLens HookedRootModule with the standard residual hook names."""

import torch

from persona_lens.core.hooked_model import HookedLM


def test_standard_hook_names(tiny_model):
    names = set(tiny_model.hook_dict)
    for i in range(tiny_model.cfg.n_layers):
        assert f"blocks.{i}.hook_resid_pre" in names and f"blocks.{i}.hook_resid_post" in names


@torch.no_grad()
def test_tl_hooks_context_modifies_the_forward_and_is_removed(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8]])
    clean = tiny_model(ids)
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x * 0)]):
        zeroed = tiny_model(ids)
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(tiny_model(ids), clean)


@torch.no_grad()
def test_bridge_shares_weights_and_agrees(tiny_model):
    bridge = tiny_model.to_bridge()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(bridge(ids), tiny_model(ids), rtol=1e-4, atol=1e-4)
    ours = dict(tiny_model.hf_model.named_parameters())
    shared = {id(p) for p in bridge.original_model.parameters()}
    assert all(id(p) in shared for p in ours.values())


@torch.no_grad()
def test_run_blocks_stops_early_and_computes_no_logits(tiny_model):
    seen = []
    hooks = [(f"blocks.{i}.hook_resid_post", lambda x, hook: seen.append(hook.name)) for i in range(4)]
    with tiny_model.hooks(fwd_hooks=hooks):
        tiny_model.run_blocks(torch.tensor([[5, 6, 7]]), stop_at_layer=2)
    assert seen == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_wrapping_any_hf_model(tiny_model):
    again = HookedLM(tiny_model.hf_model, tiny_model.tokenizer, model_name="again")
    assert again.cfg.n_layers == tiny_model.cfg.n_layers


def test_blocks_are_wired_to_hook_points_only_once_hooked():
    # A fresh model: blocks nobody hooked keep PyTorch's fast call path (no module hooks at all).
    model = HookedLM(*_fresh_hf("tiny-qwen2"))
    layers = model._layers
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_post", lambda x, hook: x)]):
        pass
    assert [bool(layer._forward_hooks) for layer in layers] == [False, False, True, False]
    assert all(not layer._forward_pre_hooks for layer in layers)


@torch.no_grad()
def test_hooks_on_the_model_do_not_reach_its_bridge():
    model = HookedLM(*_fresh_hf("tiny-llama"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x * 0)]):
        pass  # the block is wired now; its copy inside the bridge must not fire this model's hook point
    bridge = model.to_bridge()
    clean = bridge(ids)
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x * 0)]):
        assert not torch.allclose(model(ids), clean)
        torch.testing.assert_close(bridge(ids), clean)


def _fresh_hf(name):
    from persona_lens.core.tiny import build_tiny

    return build_tiny(name)
