"""K full finetunes of one small model in one vectorised run, each under its own preventative steering vector.

The control for preventative steering (the organism's claim 4) is the same finetune under K random vectors of the
steering vector's norm: K finetunes that differ *only* in the vector added at one layer. They share the base
weights, the data and its order, so they can run as one: the K copies of the weights are stacked along a leading
axis and one step is ``torch.func.vmap`` over ``grad`` of :func:`persona_lens.experiments.finetune.response_loss`
(through ``torch.func.functional_call`` on the model itself, so the loss, the hook points and the steering hook are
the ones the sequential :func:`~persona_lens.experiments.finetune.finetune` uses), followed by per-copy gradient
clipping and AdamW written out on the stacked tensors with the same element-wise operations as
``torch.optim.AdamW``'s single-tensor path.

Scope (refused otherwise, naming the fix): ``method="full"``, one steering layer, raw coefficient at every position
(:class:`~persona_lens.experiments.finetune.TrainingIntervention` ``kind="steer"``, ``positions="all"``). The result
equals K sequential finetunes to float rounding (the reductions of the gradient norm and of the batched matmuls
may round differently): ``tests/experiments/test_finetune_batched.py`` checks it against the sequential finetune.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import AddVector, install_hooks
from persona_lens.core.layers import check_layer, hook_name
from persona_lens.experiments.finetune import (
    FinetuneConfig,
    TrainingExample,
    _batches,
    _check_trainable,
    encode_dataset,
    response_loss,
)

__all__ = ["BatchedFinetune", "finetune_steered_batch"]

#: torch.optim.AdamW's defaults, which the sequential finetune uses.
_BETAS = (0.9, 0.999)
_EPS = 1e-8


@dataclass
class BatchedFinetune:
    """The K finetuned copies' weights (stacked along a leading axis) and per-copy losses (``[step, k]``)."""

    params: dict[str, Tensor]
    """``hf_model`` parameter name -> ``[k, *shape]``."""
    losses: list[list[float]] = field(default_factory=list)
    n_examples: int = 0

    @property
    def k(self) -> int:
        return int(next(iter(self.params.values())).shape[0])

    def load_into(self, model: HookedLM, index: int) -> HookedLM:
        """Copy finetune ``index``'s weights into ``model`` (a fresh copy of the base model), in place; returns it."""
        if not 0 <= index < self.k:
            raise IndexError(f"finetune {index} of {self.k}")
        with torch.no_grad():
            for name, param in model.hf_model.named_parameters():
                param.copy_(self.params[name][index])
        return model

    def copies(self, model: HookedLM) -> Iterator[HookedLM]:
        """``model`` holding each finetune's weights in turn (the same object, reloaded for each index)."""
        for index in range(self.k):
            yield self.load_into(model, index)


class _Loss(nn.Module):
    """The sequential finetune's loss as a module of the model, so ``functional_call`` swaps its weights."""

    def __init__(self, model: HookedLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, examples: Sequence[TrainingExample]) -> Tensor:
        return response_loss(self.model, examples)[0]


def _steering_rows(vectors: Tensor, layer: int, n_layers: int) -> Float[Tensor, "k d_model"]:
    if vectors.ndim == 3:
        if vectors.shape[1] != n_layers + 1:
            raise ValueError(f"steering vectors are {tuple(vectors.shape)}; [k, {n_layers + 1}, d_model] expected")
        vectors = vectors[:, layer]
    if vectors.ndim != 2:
        raise ValueError(f"steering vectors must be [k, d_model] or [k, n_layers + 1, d_model], got {vectors.shape}")
    if not bool(torch.isfinite(vectors).all()):
        raise ValueError("a steering vector holds NaN or infinity")
    return vectors.detach().float()


def finetune_steered_batch(
    model: HookedLM,
    dataset: Sequence[Any],
    vectors: Float[Tensor, "k d_model"] | Float[Tensor, "k layer d_model"],
    *,
    layer: int,
    coef: float,
    config: FinetuneConfig | None = None,
) -> BatchedFinetune:
    """Finetune K copies of ``model`` (left unchanged) on ``dataset``, copy ``i`` with ``coef * vectors[i]`` added
    to the residual stream at ``layer`` at every position during training: what K calls of
    :func:`~persona_lens.experiments.finetune.finetune` with
    ``TrainingIntervention("steer", vectors[i], layer, coef=coef)`` give, in one vectorised run."""
    config = config or FinetuneConfig(method="full")
    if config.method != "full":
        raise ValueError("finetune_steered_batch trains every weight (method='full'); LoRA copies are not batched")
    hf_model = model.hf_model
    _check_trainable(hf_model)
    layer = check_layer(layer, model.cfg.n_layers)
    if not math.isfinite(float(coef)):
        raise ValueError(f"coef must be finite, got {coef!r}")
    steering = _steering_rows(torch.as_tensor(vectors), layer, model.cfg.n_layers).to(model.device)
    k = steering.shape[0]
    examples, _ = encode_dataset(model, dataset, config)
    if not examples:
        raise ValueError("the dataset holds no trainable example")
    base = {name: p.detach() for name, p in hf_model.named_parameters()}
    params = {name: p.unsqueeze(0).repeat(k, *([1] * p.ndim)).clone() for name, p in base.items()}
    exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
    exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}
    loss_module = _Loss(model)
    point = hook_name(layer, model.cfg.n_layers)
    # one name per (module, weight) slot: the model reaches its decoder layers by two paths (one module each, so
    # swapped once), while a tied weight (lm_head = embed_tokens) sits in two modules (swapped in both); swapping a
    # slot twice would leave the vmapped tensor in it after the call
    canonical = {id(p): name for name, p in hf_model.named_parameters()}
    aliases = {
        f"{prefix}.{attr}" if prefix else attr: canonical[id(p)]
        for prefix, module in loss_module.named_modules()
        for attr, p in module.named_parameters(recurse=False)
    }

    def loss_of(weights: dict[str, Tensor], vector: Tensor, batch: list[TrainingExample]) -> Tensor:
        swapped = {full: weights[name] for full, name in aliases.items()}
        with install_hooks(model, [(point, AddVector(vector, float(coef), "all"))]):
            return functional_call(loss_module, swapped, (batch,), tie_weights=False)

    step_fn = vmap(grad_and_value(loss_of), in_dims=(0, 0, None))
    result = BatchedFinetune(params, [], len(examples))
    beta1, beta2 = _BETAS
    step = 0
    was_training = hf_model.training
    hf_model.train()
    try:
        for epoch in range(config.epochs):
            for indices in _batches(len(examples), config.batch_size, config.seed, epoch):
                grads, losses = step_fn(params, steering, [examples[i] for i in indices])
                if not bool(torch.isfinite(losses).all()) or not all(
                    bool(torch.isfinite(g).all()) for g in grads.values()
                ):
                    raise ValueError(f"a copy's loss or gradient is not finite at step {step + 1}; lower lr or coef")
                if config.grad_clip is not None:
                    norms = torch.stack([g.reshape(k, -1).norm(dim=1) for g in grads.values()], dim=1)  # [k, param]
                    total = norms.norm(dim=1)  # [k]
                    scale = torch.clamp(config.grad_clip / (total + 1e-6), max=1.0)
                    grads = {n: g * scale.view(k, *([1] * (g.ndim - 1))) for n, g in grads.items()}
                step += 1
                bias1, bias2 = 1 - beta1**step, 1 - beta2**step
                with torch.no_grad():
                    for name, param in params.items():
                        g = grads[name]
                        param.mul_(1 - config.lr * config.weight_decay)
                        exp_avg[name].lerp_(g, 1 - beta1)
                        exp_avg_sq[name].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        denom = (exp_avg_sq[name].sqrt() / math.sqrt(bias2)).add_(_EPS)
                        param.addcdiv_(exp_avg[name], denom, value=-config.lr / bias1)
                result.losses.append([float(v) for v in losses])
    finally:
        hf_model.train(was_training)
    return result
