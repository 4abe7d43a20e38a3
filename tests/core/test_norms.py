"""The residual stream's scale (what relative steering coefficients refer to), against an independent computation."""

import pytest
import torch

from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.layers import hook_name
from persona_lens.core.norms import (
    REFERENCE_QUESTIONS,
    median_residual_norms,
    raw_coefficient,
    reference_conversations,
    relative_coefficient,
)


@torch.no_grad()
def test_median_residual_norms_match_run_with_cache(tiny_model):
    """Independent: TransformerLens run_with_cache on each prompt, norms of every token but the first, median."""
    n_layers = tiny_model.cfg.n_layers
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(n_layers + 1)}
    for question in REFERENCE_QUESTIONS:
        ids = torch.tensor([encode_prompt(tiny_model.tokenizer, make_messages(question))])
        _, cache = tiny_model.run_with_cache(ids)
        for layer in norms:
            norms[layer].append(cache[hook_name(layer, n_layers)][0, 1:].norm(dim=-1))
    expected = torch.stack([torch.cat(norms[layer]).median() for layer in range(n_layers + 1)])
    torch.testing.assert_close(median_residual_norms(tiny_model), expected, rtol=1e-4, atol=1e-5)


def test_repeated_prompts_do_not_change_the_median(tiny_model):
    conversations = reference_conversations(tiny_model, REFERENCE_QUESTIONS[:3])
    torch.testing.assert_close(
        median_residual_norms(tiny_model, conversations * 3), median_residual_norms(tiny_model, conversations)
    )


def test_conversion_round_trips_and_refuses_a_zero_vector():
    assert raw_coefficient(0.5, 2.0, 8.0) == pytest.approx(2.0)
    assert relative_coefficient(2.0, 2.0, 8.0) == pytest.approx(0.5)
    torch.testing.assert_close(raw_coefficient(torch.tensor([0.0, 1.0]), 4.0, 2.0), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="zero"):
        raw_coefficient(1.0, 0.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        median_residual_norms(object(), [])
