"""Tensor files of the persona space: one ``.safetensors`` each, metadata as JSON in its header, written through
:mod:`persona_lens.core.io`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor

from persona_lens.core.io import atomic_output

__all__ = []


_FORMAT = "persona_lens.space"


def _save_tensors(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any], kind: str) -> Path:
    data = safetensors.torch.save(
        {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
        metadata={"format": _FORMAT, "kind": kind, "meta": json.dumps(meta)},
    )
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _load_tensors(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (safetensors.SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a safetensors file ({error}); was it written by persona_lens?") from None
    if header.get("format") != _FORMAT or header.get("kind") != kind:
        raise ValueError(
            f"{path} is not a persona_lens {kind} file (format {header.get('format')!r}, kind "
            f"{header.get('kind')!r}); pass the file `persona_lens space` wrote"
        )
    return tensors, json.loads(header.get("meta", "{}"))
