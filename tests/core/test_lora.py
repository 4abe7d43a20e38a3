"""The low-rank adapter: exact maths against a manual computation, identity at init, merge, what is trainable."""

import pytest
import torch
from torch import nn

import persona_lens
from persona_lens.core.lora import LoRALinear, apply_lora, default_targets, lora_modules, lora_parameters, merge_lora
from persona_lens.core.tiny import ARCHITECTURES


def test_lora_linear_matches_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=3, alpha=12.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 6)
    expected = x @ base.weight.T + base.bias + (12.0 / 3) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)
    assert not base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_lora_linear_starts_as_the_base_layer():
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    torch.testing.assert_close(LoRALinear(base, r=2, alpha=4.0)(x), base(x))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_apply_train_merge_on_a_model(name):
    model = persona_lens.load_model(name, device="cpu")  # a private copy: this test changes weights
    ids = torch.tensor([[5, 17, 33, 90, 120, 7]])
    with torch.no_grad():
        before = model(ids).clone()
    n_linear_in_blocks = len(default_targets(model.hf_model))
    names = apply_lora(model.hf_model, r=4, alpha=8.0)
    assert len(names) == n_linear_in_blocks > 0
    assert all("lm_head" not in n and "embed" not in n for n in names)
    # Only adapter parameters are trainable; their count is r * (in + out) per wrapped layer.
    trainable = {n for n, p in model.hf_model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model.hf_model))
    expected_count = sum(4 * (m.in_features + m.out_features) for m in lora_modules(model.hf_model).values())
    assert sum(p.numel() for p in lora_parameters(model.hf_model).values()) == expected_count
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before)  # B = 0: identity at init
        for module in lora_modules(model.hf_model).values():
            module.lora_B.normal_(0, 0.05)
        adapted = model(ids).clone()
    assert (adapted - before).abs().max() > 1e-3
    # Gradients reach the adapters only.
    model(ids).float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in lora_parameters(model.hf_model).values())
    assert all(p.grad is None for n, p in model.hf_model.named_parameters() if ".lora_" not in n)
    # Merging folds the update into plain Linear weights and keeps the function.
    assert merge_lora(model.hf_model) == len(names)
    assert not lora_modules(model.hf_model)
    assert all(type(model.hf_model.get_submodule(n)) is nn.Linear for n in names)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), adapted, rtol=1e-4, atol=1e-4)


def test_targets_select_by_suffix_and_regex():
    model = persona_lens.load_model("tiny-llama", device="cpu")
    names = apply_lora(model.hf_model, r=2, alpha=2.0, targets=["q_proj", "mlp.down_proj"])
    assert sorted({n.rsplit(".", 1)[-1] for n in names}) == ["down_proj", "q_proj"]
    assert len(names) == 2 * model.cfg.n_layers
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model.hf_model, r=2, alpha=2.0)
    merge_lora(model.hf_model)
    names = apply_lora(model.hf_model, r=2, alpha=2.0, targets=["re:.*layers\\.0\\..*"])
    assert names and all(".layers.0." in n for n in names)
    merge_lora(model.hf_model)
    with pytest.raises(ValueError, match="no Linear layer"):
        apply_lora(model.hf_model, r=2, alpha=2.0, targets=["nonexistent_proj"])
