"""A low-rank adapter (LoRA) written from scratch: wrap Linear layers, train only the adapters, merge them back.

For a frozen ``Linear`` with weight ``W [out, in]`` (and bias ``b``), the adapted layer computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,      A [r, in], B [out, r]

``A`` starts as Kaiming-uniform noise and ``B`` as zeros, so a freshly adapted model computes exactly what the
base model computes. :func:`merge_lora` folds ``W <- W + (alpha / r) B A`` into the weight and puts a plain
``Linear`` back, so a merged model is an ordinary Hugging Face model again (savable, loadable, no trace of us).

Targets: by default every ``nn.Linear`` inside the decoder blocks (attention q/k/v/o and MLP gate/up/down
projections, whatever the architecture names them); the embeddings and the LM head are never adapted. The adapter
weights live in float32 whatever the base dtype; inputs are cast to float32 for the adapter path and the result
cast back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from persona_lens.core.hooked_model import find_decoder_layers

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "lora_modules", "lora_parameters", "default_targets"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``.base``) plus a trainable low-rank update ``(alpha / r) B A``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout}")
        self.base = base
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for param in self.base.parameters():
            param.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:  # some model code reads `.weight` of its projections (dtype checks)
        return self.base.weight

    def delta_weight(self) -> Tensor:
        """``(alpha / r) B A`` in float32, shape ``[out, in]``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        update = self.dropout(x.float()) @ self.lora_A.T @ self.lora_B.T
        return self.base(x) + (self.scaling * update).to(x.dtype)

    def merged(self) -> nn.Linear:
        """The base Linear with the update folded into its weight (in place on ``.base``)."""
        with torch.no_grad():
            weight = self.base.weight
            weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def default_targets(hf_model: nn.Module) -> list[str]:
    """Names (relative to ``hf_model``) of every ``nn.Linear`` inside the decoder blocks."""
    layers = find_decoder_layers(hf_model)
    layer_ids = {id(layer) for layer in layers}
    prefix_of = {}
    for name, module in hf_model.named_modules():
        if id(module) in layer_ids:
            prefix_of[id(module)] = name
    names = []
    for layer in layers:
        prefix = prefix_of[id(layer)]
        for sub_name, module in layer.named_modules():
            if isinstance(module, nn.Linear) and sub_name:
                names.append(f"{prefix}.{sub_name}")
    return names


def _select(hf_model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    candidates = default_targets(hf_model)
    if targets is None:
        return candidates
    # A target is a module-name suffix ("q_proj", "mlp.down_proj") or a regular expression ("re:.*proj").
    chosen = []
    for name in candidates:
        for target in targets:
            if target.startswith("re:"):
                if re.fullmatch(target[3:], name):
                    chosen.append(name)
                    break
            elif name == target or name.endswith("." + target):
                chosen.append(name)
                break
    if not chosen:
        short = sorted({name.rsplit(".", 1)[-1] for name in candidates})
        raise ValueError(
            f"no Linear layer of the decoder blocks matches targets {list(targets)}; the candidates are named {short}"
        )
    return chosen


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply_lora(
    hf_model: nn.Module, *, r: int, alpha: float, dropout: float = 0.0, targets: Sequence[str] | None = None
) -> list[str]:
    """Wrap the target Linear layers of ``hf_model`` in :class:`LoRALinear` (in place) and freeze everything else.

    ``targets``: None for every Linear of the decoder blocks, or module-name suffixes (``["q_proj", "v_proj"]``)
    or ``"re:<regex>"`` patterns matched against full module names. Returns the wrapped module names.
    """
    if lora_modules(hf_model):
        raise ValueError("this model already has LoRA adapters; merge_lora() them first")
    names = _select(hf_model, targets)
    for param in hf_model.parameters():
        param.requires_grad_(False)
    for name in names:
        layer = hf_model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name} is a {type(layer).__name__}; LoRA adapts nn.Linear layers only")
        _set_module(hf_model, name, LoRALinear(layer, r, alpha, dropout))
    return names


def lora_modules(hf_model: nn.Module) -> dict[str, LoRALinear]:
    return {name: module for name, module in hf_model.named_modules() if isinstance(module, LoRALinear)}


def lora_parameters(hf_model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters, by their full names (``....q_proj.lora_A``)."""
    return {name: param for name, param in hf_model.named_parameters() if ".lora_" in name}


def merge_lora(hf_model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the plain Linear back (in place). Returns how many."""
    modules = lora_modules(hf_model)
    for name, module in modules.items():
        _set_module(hf_model, name, module.merged())
    return len(modules)
