"""The one formatter of numbers the commands print: a missing value (None, NaN, a non-number) is ``n/a``, never a
``TypeError`` in a summary line (a sweep whose every baseline reply is unscored prints ``trait n/a``)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["format_value", "MISSING"]

MISSING = "n/a"


def format_value(value: Any, spec: str = ".2f", missing: str = MISSING) -> str:
    """``format(value, spec)`` for a real number; ``missing`` for None, NaN, a bool or anything that is no number.

    >>> format_value(0.5), format_value(None), format_value(float("nan"), ".1f"), format_value(3, "+.1f")
    ('0.50', 'n/a', 'n/a', '+3.0')
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return missing
    if isinstance(value, float) and math.isnan(value):
        return missing
    return format(value, spec)
