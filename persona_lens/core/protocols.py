"""What the core asks of the models it is handed: structural types, not base classes.

:class:`TransformerLensModel` is the contract of the residual-stream hooks (:mod:`persona_lens.core.hooks`): named
TransformerLens hook points and a ``cfg`` with the model's depth and width. A
:class:`~persona_lens.core.hooked_model.HookedLM`, a ``TransformerBridge`` and a ``HookedTransformer`` all satisfy it
without naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint

__all__ = ["TransformerLensConfig", "TransformerLensModel"]


@runtime_checkable
class TransformerLensConfig(Protocol):
    """The part of a TransformerLens ``cfg`` the hooks read."""

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...


@runtime_checkable
class TransformerLensModel(Protocol):
    """A model with TransformerLens hook points: ``hook_dict`` by name (``blocks.{i}.hook_resid_post``, ...) and a
    ``cfg`` with ``n_layers`` and ``d_model``."""

    @property
    def cfg(self) -> TransformerLensConfig: ...

    @property
    def hook_dict(self) -> Mapping[str, HookPoint]: ...
