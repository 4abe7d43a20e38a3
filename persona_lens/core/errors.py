"""The one base of every persona_lens domain error: ``except persona_lens.Error`` catches them all.

Each domain error also keeps the builtin it derived from before (``ValueError``, ``RuntimeError``), so code that
catches those keeps working; the messages are the classes' own. Control-flow signals that never leave the package
(``_StopForward``, ``_GaveUp``) do not derive from it.
"""

from __future__ import annotations

__all__ = ["Error"]


class Error(Exception):
    """Base of every error persona_lens raises on purpose (bad input, unusable files, refused services)."""
