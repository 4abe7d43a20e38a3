"""The one check of every number that enters persona_lens: the API and the CLI call the same functions here.

Each function takes the value and the ``name`` to use in a message (``"temperature"`` from the API,
``"--temperature"`` from the CLI, see :mod:`persona_lens.cli.options`), returns the value as the right type, and
raises :class:`BadValue` (a ValueError) naming the argument, what it got and what to give instead. So ``NaN``, ``inf``,
``-1`` batch sizes, ``True`` as a layer and the like never run: they stop before any work with one clear sentence.

* :func:`finite`: a real number, not NaN or infinite; optionally within bounds.
* :func:`positive_int`, :func:`non_negative_int`, :func:`optional_positive_int`: counts (bools refused).
* :func:`probability` (0..1), :func:`temperature` (>= 0), :func:`score_threshold` (finite).
* :func:`layer_index`: an int layer (``True`` is not layer 1), :func:`finite_values`: a tensor or list with no
  NaN or infinity (coefficients, vectors).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from persona_lens.core.errors import Error

__all__ = [
    "BadValue",
    "finite",
    "positive_int",
    "non_negative_int",
    "optional_positive_int",
    "probability",
    "temperature",
    "score_threshold",
    "layer_index",
    "finite_values",
    "check_all_finite",
]


class BadValue(Error, ValueError):
    """A number that persona_lens refuses: the message names the argument and the fix."""


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            return _number(value.item(), name)
        raise BadValue(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def finite(
    value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None, above: float | None = None
) -> float:
    """``value`` as a float if it is a finite real number (and ``>= minimum``, ``<= maximum``, ``> above``)."""
    number = _number(value, name)
    if not math.isfinite(number):
        raise BadValue(f"{name} must be a finite number, got {value!r}; give a real value such as 1.0")
    if minimum is not None and number < minimum:
        raise BadValue(f"{name} must be >= {minimum:g}, got {value!r}")
    if above is not None and number <= above:
        raise BadValue(f"{name} must be > {above:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise BadValue(f"{name} must be <= {maximum:g}, got {value!r}")
    return number


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise BadValue(f"{name} must be an integer, got the bool {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _integer(value.item(), name)
    raise BadValue(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def positive_int(value: Any, name: str) -> int:
    """A count of at least 1 (batch sizes, samples, steps)."""
    number = _integer(value, name)
    if number < 1:
        raise BadValue(f"{name} must be >= 1, got {number}")
    return number


def non_negative_int(value: Any, name: str) -> int:
    """An integer of at least 0 (seeds, \"every N steps\" where 0 means never)."""
    number = _integer(value, name)
    if number < 0:
        raise BadValue(f"{name} must be >= 0, got {number}")
    return number


def optional_positive_int(value: Any, name: str) -> int | None:
    """None (no limit) or a count of at least 1 (``--questions``, ``--pairs``: never a negative Python slice)."""
    return None if value is None else positive_int(value, name)


def probability(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """A number in [0, 1] (or (0, 1] without ``allow_zero``: nucleus ``top_p``)."""
    number = finite(value, name)
    if not (0 <= number <= 1) or (not allow_zero and number == 0):
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise BadValue(f"{name} must be in {bounds}, got {value!r}")
    return number


def temperature(value: Any, name: str = "temperature") -> float:
    """A sampling temperature: finite and >= 0 (0 = greedy); a negative one is refused, not taken as greedy."""
    number = finite(value, name)
    if number < 0:
        raise BadValue(f"{name} must be >= 0 (0 = greedy), got {value!r}")
    return number


def score_threshold(value: Any, name: str) -> float:
    """A threshold on judge scores (0-100): any finite number (NaN would silently disable a filter; above 100 keeps
    nothing, which the filters then say)."""
    return finite(value, name)


def layer_index(value: Any, name: str = "layer") -> int:
    """An int layer (bools are refused: ``True`` is not layer 1); the range is checked against the model by
    :func:`persona_lens.core.layers.check_layer`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadValue(f"{name} must be an int layer, got {type(value).__name__} {value!r}")
    return int(value)


def check_all_finite(values: Any, name: str, *, fix: str = "") -> None:
    """Refuse a tensor, array or list holding NaN or infinity (``fix`` is appended to the message)."""
    if hasattr(values, "isfinite") or type(values).__module__.startswith("torch"):
        import torch

        ok = bool(torch.isfinite(values).all())
    elif hasattr(values, "dtype") and hasattr(values, "shape"):  # numpy
        import numpy

        ok = bool(numpy.isfinite(values).all())
    else:
        ok = all(math.isfinite(_number(v, name)) for v in _flatten(values))
    if not ok:
        raise BadValue(f"{name} holds NaN or infinite values" + (f"; {fix}" if fix else ""))


def finite_values(values: Any, name: str) -> Any:
    """``values`` (a number, tensor or list of numbers) if every entry is finite; a number comes back as a float."""
    if isinstance(values, numbers.Real) or isinstance(values, bool):
        return finite(values, name)
    check_all_finite(values, name, fix="give finite values")
    return values


def _flatten(values: Any) -> Iterable[Any]:
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        else:
            yield value
