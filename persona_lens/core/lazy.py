"""Lazy re-exports for a package ``__init__`` (PEP 562): a name's module is imported on the name's first use.

What keeps ``import persona_lens`` and every ``--help`` free of torch: a package lists its public names grouped by
the module that defines them, and :func:`lazy_exports` returns the ``__all__``, ``__getattr__`` and ``__dir__`` the
package assigns. A name that is also a submodule of the package must not be listed (the import system would set the
module in its place once anything imports that submodule; ``tests/test_public_api.py`` checks every package).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, groups: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` re-exporting ``groups`` (module -> names) lazily.

    Raises ``ValueError`` for a name given twice.
    """
    where: dict[str, str] = {}
    for module, names in groups.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} is exported from both {where[name]} and {module}")
            where[name] = module
    exported = list(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exported})

    return exported, __getattr__, __dir__
