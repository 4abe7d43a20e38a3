"""One model across several devices: accelerate's device maps, CPU offload and disk offload.

``load_model(name, device_map=...)`` lands here. A device map says where each part of the model lives:

* ``"auto"`` (or ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``): accelerate fills the GPUs in order, then
  the CPU, then the disk (``offload_folder``), within ``max_memory`` (``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``);
* a dict ``{module name: device}`` (``"model.layers.3": 1``, ``"lm_head": "cpu"``, ``"model.layers.9": "disk"``):
  exactly that. :func:`layered_device_map` writes one from a device per block.

A block on ``"cpu"`` (when a GPU is the main device) or ``"disk"`` is *offloaded*: its weights stay there and are
brought to the main device for its forward pass only. Hooks are unaffected: a hook point fires on the tensor the
block receives or returns, on that block's device and dtype, and steering hooks keep one copy of their vector per
device and dtype (:class:`persona_lens.core.hooks._ResidualHook`), made on first use, not per step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "find_decoder_layers",
    "DeviceMap",
    "AUTO_MAPS",
    "dispatch",
    "layered_device_map",
    "input_device",
    "block_devices",
    "is_dispatched",
    "check_device_map_args",
    "offloaded_parameters",
]

DeviceMap = str | Mapping[str, int | str | torch.device]
AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def find_decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a Hugging Face causal LM, whatever the architecture calls it."""
    config: Any = hf_model.config  # Hugging Face configs carry their fields dynamically
    n_layers = config.num_hidden_layers
    for attr in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj: Any = hf_model
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) == n_layers:
            return obj
    for module in hf_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} decoder blocks of {type(hf_model).__name__}")


def check_device_map_args(
    device_map: DeviceMap | None,
    max_memory: Mapping[Any, Any] | None,
    offload_folder: str | os.PathLike[str] | None,
    device: Any,
) -> None:
    """Loud errors for argument combinations that cannot mean anything."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError(
                "max_memory and offload_folder only apply with device_map=...; pass device_map='auto' "
                "or a dict {module: device}"
            )
        return
    if device is not None:
        raise ValueError("pass either device= (the whole model on one device) or device_map= (split), not both")
    if isinstance(device_map, str):
        if device_map not in AUTO_MAPS:
            raise ValueError(f"unknown device_map {device_map!r}; use one of {AUTO_MAPS} or a dict {{module: device}}")
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise ValueError("device_map must be 'auto' or a non-empty dict {module name: device}")
    if "disk" in device_map.values() and offload_folder is None:
        raise ValueError("device_map sends modules to 'disk': pass offload_folder=<a folder for their weights>")


def _no_split(hf_model: nn.Module) -> list[str]:
    # A decoder block must stay whole on one device (its residual add), whatever the architecture calls it.
    names = set(getattr(hf_model, "_no_split_modules", None) or [])
    names.add(type(find_decoder_layers(hf_model)[0]).__name__)
    return sorted(names)


def layered_device_map(
    hf_model: nn.Module, block_devices: Sequence[int | str | torch.device], rest: int | str | torch.device = "cpu"
) -> dict[str, int | str | torch.device]:
    """A device map with block ``i`` on ``block_devices[i]`` and everything else (embeddings, norm, head) on ``rest``.

    Module names come from the model itself, so the map fits any architecture.
    """
    layers = find_decoder_layers(hf_model)
    if len(block_devices) != len(layers):
        raise ValueError(f"{len(block_devices)} block devices for a model with {len(layers)} blocks")
    names = {id(module): name for name, module in hf_model.named_modules()}
    layers_name = names[id(layers)]
    device_map: dict[str, int | str | torch.device] = {}
    for name, child in hf_model.named_children():
        if child is layers:
            continue
        if name + "." in layers_name + ".":  # the container of the blocks: split it into its children
            for sub_name, sub in child.named_modules():
                full = f"{name}.{sub_name}" if sub_name else name
                if sub is layers or not sub_name or "." in sub_name or layers_name.startswith(full + "."):
                    continue
                device_map[full] = rest
        else:
            device_map[name] = rest
    for i, device in enumerate(block_devices):
        device_map[f"{layers_name}.{i}"] = device
    return device_map


def dispatch(
    hf_model: nn.Module,
    device_map: DeviceMap,
    *,
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Place an in-memory Hugging Face model according to ``device_map`` (accelerate ``dispatch_model``).

    Disk-offloaded weights go to a fresh sub-folder of ``offload_folder`` (accelerate would otherwise reuse any
    weights it finds there, even another model's).
    """
    from accelerate import dispatch_model, infer_auto_device_map

    placement: dict[str, int | str | torch.device]
    if isinstance(device_map, str):
        placement = infer_auto_device_map(
            hf_model, max_memory=dict(max_memory) if max_memory else None, no_split_module_classes=_no_split(hf_model)
        )
    else:
        placement = dict(device_map)
    offload_dir = None
    if "disk" in placement.values():
        if offload_folder is None:
            raise ValueError("device_map sends modules to 'disk': pass offload_folder=<a folder for their weights>")
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        offload_dir = tempfile.mkdtemp(prefix="offload-", dir=offload_folder)
    dispatched: Any = dispatch_model(hf_model, device_map=placement, offload_dir=offload_dir)
    dispatched.hf_device_map = placement
    return dispatched


def offloaded_parameters(hf_model: nn.Module) -> list[str]:
    """Names of the parameters accelerate keeps off the model (CPU or disk offload): they are on the meta device
    between forward passes, so they can be read through the model but not trained."""
    return [name for name, param in hf_model.named_parameters() if param.device.type == "meta"]


def is_dispatched(hf_model: nn.Module) -> bool:
    """Whether accelerate placed this model (a device map with several devices or offload)."""
    return any(hasattr(module, "_hf_hook") for module in hf_model.modules())


def _execution_device(module: nn.Module) -> torch.device | None:
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    for one in hooks:
        device = getattr(one, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def _device_of(module: nn.Module, ancestors: Sequence[nn.Module]) -> torch.device:
    for candidate in (module, *reversed(ancestors)):  # accelerate's hook sits on the module or a parent
        device = _execution_device(candidate)
        if device is not None:
            return device
    tensor: torch.Tensor | None = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    if tensor is None:
        raise ValueError(f"cannot tell the device of {type(module).__name__}: no weights and no accelerate hook")
    if tensor.device.type == "meta":
        raise ValueError(
            f"{type(module).__name__} has weights on the meta device and no accelerate hook to load "
            "them: load the model with load_model(..., device_map=...)"
        )
    return tensor.device


def _ancestors(root: nn.Module, target: nn.Module) -> list[nn.Module]:
    path: list[nn.Module] = []

    def walk(module: nn.Module) -> bool:
        if module is target:
            return True
        path.append(module)
        for child in module.children():
            if walk(child):
                return True
        path.pop()
        return False

    if not walk(root):
        raise ValueError(f"{type(target).__name__} is not part of {type(root).__name__}")
    return path


def input_device(hf_model: nn.Module) -> torch.device:
    """The device token ids must be on: where the input embedding runs (its execution device when offloaded)."""
    hf: Any = hf_model  # Hugging Face models' methods are not visible on nn.Module
    embedding: nn.Module = hf.get_input_embeddings()
    return _device_of(embedding, _ancestors(hf_model, embedding))


def block_devices(hf_model: nn.Module) -> list[torch.device]:
    """The device each decoder block runs on (its weights' device, or accelerate's execution device)."""
    layers = find_decoder_layers(hf_model)
    ancestors = _ancestors(hf_model, layers)
    return [_device_of(block, [*ancestors, layers]) for block in layers]
