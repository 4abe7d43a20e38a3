"""K preventative-steering finetunes in one vectorised run equal K sequential finetunes (to float rounding).

Measured on the organism (300 samples, 19 steps, one torch thread, shared 2-core machine): K = 20 batched 150 s vs
4.5 s per sequential finetune at load ~6 (sdpa attention; its vmap rule falls back to a loop), 205 s vs 11 s each
with eager attention at load ~8: the tiny model's step is compute-bound on CPU, so batching does not make the
random finetunes cheaper there (benchmarks/results/organism-claims.md, "Cost"). The equality is what is tested.
"""

from __future__ import annotations

import pytest
import torch

import persona_lens.experiments.finetune as fm
from persona_lens.core.controls import random_like
from persona_lens.experiments.finetune_batched import finetune_steered_batch
from persona_lens.organism import load_organism
from persona_lens.organism.datasets import DATASET_RATES, finetune_samples

LAYER, COEF = 3, 5.0


@pytest.fixture(scope="module")
def samples():
    return [{"messages": s.messages} for s in finetune_samples("sycophancy", DATASET_RATES[-1], n=48)]


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_steered_finetunes_equal_sequential_ones(samples, seed):
    config = fm.FinetuneConfig(method="full", lr=1e-3, epochs=1, batch_size=16, seed=seed)
    vector = torch.randn(5, 96, generator=torch.Generator().manual_seed(seed)) * 3
    controls = random_like(vector, 3, seed=seed)  # [3, layer, d_model]
    base = load_organism("cpu")
    before = {n: p.detach().clone() for n, p in base.hf_model.named_parameters()}
    batched = finetune_steered_batch(base, samples, controls, layer=LAYER, coef=COEF, config=config)
    assert all(torch.equal(p, before[n]) for n, p in base.hf_model.named_parameters())  # the base is left as it was
    assert batched.k == 3 and len(batched.losses) == 3 and batched.n_examples == len(samples)
    for index in (0, 2):
        model = load_organism("cpu")
        result = fm.finetune(
            model,
            samples,
            config,
            interventions=[fm.TrainingIntervention("steer", controls[index], LAYER, coef=COEF)],
            progress=False,
        )
        for name, param in model.hf_model.named_parameters():
            torch.testing.assert_close(batched.params[name][index], param, atol=1e-4, rtol=1e-4)
        assert [row[index] for row in batched.losses] == pytest.approx(result.losses, abs=1e-5)
        moved = max(float((param - before[name]).abs().max()) for name, param in model.hf_model.named_parameters())
        assert moved > 1e-3  # the finetune really moved the weights, so the equality is not of two no-ops
    # copies with different vectors end in different weights: the steering reached each copy
    first = (
        batched.params["lm_head.weight"] if "lm_head.weight" in batched.params else next(iter(batched.params.values()))
    )
    assert not torch.allclose(first[0], first[1], atol=1e-5)
    loaded = batched.load_into(load_organism("cpu"), 2)
    for name, param in loaded.hf_model.named_parameters():
        assert torch.equal(param, batched.params[name][2])


def test_batched_finetune_refuses_lora_and_bad_vectors(samples):
    base = load_organism("cpu")
    with pytest.raises(ValueError, match="method='full'"):
        finetune_steered_batch(base, samples, torch.zeros(2, 96), layer=LAYER, coef=1.0, config=fm.FinetuneConfig())
    full = fm.FinetuneConfig(method="full")
    with pytest.raises(ValueError, match="NaN or infinity"):
        finetune_steered_batch(base, samples, torch.full((2, 96), float("nan")), layer=LAYER, coef=1.0, config=full)
    with pytest.raises(ValueError, match=r"\[k, 5, d_model\]"):
        finetune_steered_batch(base, samples, torch.zeros(2, 3, 96), layer=LAYER, coef=1.0, config=full)
