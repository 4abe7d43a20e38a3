"""The one layer convention of persona_lens, stated once.

Layer ``l`` is row ``l`` of every ``[n_layers + 1, d_model]`` tensor we make, and equals Hugging Face's
``hidden_states[l]``:

* ``l = 0`` is the embedding stream, the input of the first block (TransformerLens ``blocks.0.hook_resid_pre``);
* ``l >= 1`` is the output of the ``l``-th block (TransformerLens ``blocks.{l-1}.hook_resid_post``).

So "layer 20 of Qwen2.5-7B" in the paper is ``layer=20`` here, in the API, the CLI, saved files and plots.
(One caveat inherited from Hugging Face: its *last* ``hidden_states`` entry has the final norm applied; ours is
the raw output of the last block, as in TransformerLens.)
"""

from __future__ import annotations

import re

__all__ = ["hook_name", "layer_of_hook", "check_layer", "all_layers"]

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` if it names a row of a ``[n_layers + 1, d_model]`` tensor, else raise a clear error."""
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    if not 0 <= layer <= n_layers:
        raise ValueError(
            f"layer {layer} is out of range: this model has {n_layers} blocks, so layers run 0..{n_layers} "
            "(0 = embeddings, l = output of block l)"
        )
    return layer


def hook_name(layer: int, n_layers: int) -> str:
    """The TransformerLens hook point that carries ``layer`` in our convention."""
    check_layer(layer, n_layers)
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def layer_of_hook(name: str) -> int:
    """Inverse of :func:`hook_name`."""
    if name == "blocks.0.hook_resid_pre":
        return 0
    match = _RESID_POST.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a residual-stream hook of our layer convention")
    return int(match.group(1)) + 1


def all_layers(n_layers: int) -> list[int]:
    return list(range(n_layers + 1))
