"""Controls: what a random direction of the same norm, another trait's vector or the flipped vector gives.

Every analysis reports its persona vector's number beside its controls, measured in the same run:

* ``random_like(vector, k, seed)`` draws ``k`` seeded random vectors with the vector's per-layer norms (each layer an
  independent Gaussian direction), so a measurement that only needs "some direction of this size" is exposed;
* :func:`compare` puts the vector's value beside the ``k`` random values (percentile, 5-95% band), the other traits'
  values (cross-trait) and the sign-flipped vector's value, as one :class:`Baseline`;
* :func:`beats_controls` and :func:`beats_others` are the one rule for "the vector beats its controls": beyond a
  stated percentile of the random values, and ahead of every other trait's vector, by ``|value - center|`` where the
  sign is not fixed beforehand (a negated vector tracks a quantity as well as the vector; it is never "far behind").

Random projections cost one matmul on cached activations (:func:`project_rows`): no extra forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "DEFAULT_RANDOM_DIRECTIONS",
    "Baseline",
    "random_directions",
    "random_like",
    "random_in_span",
    "project_rows",
    "compare",
    "layer_controls",
    "compare_measure",
    "baselines_to_dict",
    "ControlVerdict",
    "OthersVerdict",
    "beats_controls",
    "beats_others",
]

DEFAULT_RANDOM_DIRECTIONS = 100
"""K where a control costs a matmul; commands that must generate per control use fewer (their own default)."""


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"the number of random directions must be a positive int, got {k!r}")


def random_directions(d_model: int, k: int, *, seed: int = 0, norm: float | Tensor = 1.0) -> Float[Tensor, "k d_model"]:
    """``k`` seeded Gaussian directions in ``d_model`` dimensions, each scaled to ``norm`` (float32, CPU).

    The same (d_model, k, seed) always gives the same directions on every machine (CPU generator)."""
    _check_k(k)
    if not isinstance(d_model, int) or d_model < 1:
        raise ValueError(f"d_model must be a positive int, got {d_model!r}")
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randn(k, d_model, generator=generator, dtype=torch.float32)
    units = draws / draws.norm(dim=-1, keepdim=True)
    return units * torch.as_tensor(norm, dtype=torch.float32)


def random_like(vectors: Float[Tensor, "layer d_model"], k: int, *, seed: int = 0) -> Float[Tensor, "k layer d_model"]:
    """``k`` random vectors shaped like a persona vector's ``[n_layers + 1, d_model]`` tensor, row norms equal to it.

    Layer ``l`` of random vector ``i`` is an independent Gaussian direction with ``vectors[l].norm()``; a zero row
    stays zero. Accepts a :class:`~persona_lens.core.vectors.PersonaVector` too.

    Args:
        vectors: A ``[n_layers + 1, d_model]`` tensor or a PersonaVector.
        k: How many random vectors.
        seed: The draws' seed (the same seed gives the same directions).

    Returns:
        ``[k, n_layers + 1, d_model]``, each row with the norm of the vector's row.

    Raises:
        ValueError: Not a ``[n_layers + 1, d_model]`` tensor, or ``k`` below 1.

    Example:
        >>> import torch
        >>> from persona_lens.core.controls import random_like
        >>> vector = torch.randn(5, 64)
        >>> controls = random_like(vector, 3, seed=0)
        >>> controls.shape
        torch.Size([3, 5, 64])
        >>> torch.allclose(controls.norm(dim=-1), vector.norm(dim=-1).expand(3, 5))
        True
    """
    tensor = getattr(vectors, "vectors", vectors)
    if not isinstance(tensor, Tensor) or tensor.ndim != 2:
        raise ValueError(
            f"random_like needs a [n_layers + 1, d_model] tensor, got {type(tensor).__name__}"
            f"{tuple(getattr(tensor, 'shape', ()))}"
        )
    _check_k(k)
    n_rows, d_model = tensor.shape
    norms = tensor.detach().float().cpu().norm(dim=-1)  # [layer]
    draws = random_directions(d_model, k * n_rows, seed=seed).reshape(k, n_rows, d_model)
    return draws * norms[None, :, None]


def random_in_span(
    rows: Float[Tensor, "m d_model"], k: int, *, seed: int = 0, tol: float = 1e-6
) -> Float[Tensor, "k d_model"]:
    """``k`` seeded unit directions drawn uniformly within the span of ``rows`` (e.g. the centred role vectors).

    The control for "this direction of the span is special": a direction that must lie in the span anyway (a PCA
    component of these rows) is compared with random directions of the same span, not of all ``d_model``.
    Raises when the rows span nothing (all zero)."""
    _check_k(k)
    matrix = rows.detach().double().cpu()
    if matrix.ndim != 2:
        raise ValueError(f"random_in_span needs [m, d_model] rows, got shape {tuple(matrix.shape)}")
    _, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = int((singular > tol * max(float(singular.max()) if singular.numel() else 0.0, 1e-30)).sum())
    if rank == 0 or float(singular.max()) == 0.0:
        raise ValueError("the rows span nothing (all zero): there is no span to draw directions in")
    basis = vh[:rank].float()  # [rank, d_model], orthonormal
    coefficients = random_directions(rank, k, seed=seed)  # uniform on the unit sphere of the span's coordinates
    return coefficients @ basis


def project_rows(
    activations: Float[Tensor, "n d_model"], directions: Float[Tensor, "k d_model"]
) -> Float[Tensor, "k n"]:
    """Projections of ``n`` activations on ``k`` directions, each direction normalised to unit length first.

    This is how a control costs nothing extra: the activations are already cached."""
    acts = activations.detach().float().cpu()
    dirs = directions.detach().float().cpu()
    norms = dirs.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a control direction has zero norm: its projection is undefined")
    return (dirs / norms) @ acts.T


def _finite(x: Any) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return math.nan
    return value


@dataclass
class Baseline:
    """One measurement of the persona vector beside its controls (all from the same run).

    ``random`` holds the metric for each random direction; ``others`` the metric for other traits' vectors;
    ``flipped`` the sign-flipped vector's. ``higher_is_better`` says which side counts as "beats"."""

    metric: str
    value: float
    random: list[float] = field(default_factory=list)
    others: dict[str, float] = field(default_factory=dict)
    flipped: float | None = None
    higher_is_better: bool = True

    def _random(self) -> np.ndarray:
        values = np.asarray([_finite(v) for v in self.random], dtype=float)
        return values[np.isfinite(values)]

    @property
    def percentile(self) -> float:
        """Share (0-100) of random directions the vector beats (ties count half); nan without random values."""
        values = self._random()
        if values.size == 0 or not math.isfinite(self.value):
            return math.nan
        sign = 1.0 if self.higher_is_better else -1.0
        below = np.sum(sign * values < sign * self.value)
        ties = np.sum(values == self.value)
        return float(100.0 * (below + 0.5 * ties) / values.size)

    @property
    def band(self) -> tuple[float, float]:
        """The random directions' 5th and 95th percentiles (nan, nan without random values)."""
        values = self._random()
        if values.size == 0:
            return (math.nan, math.nan)
        low, high = np.percentile(values, [5, 95])
        return (float(low), float(high))

    @property
    def beats_random(self) -> bool:
        """True when the vector is beyond the random band's far edge (95th percentile, or 5th when lower is better)."""
        low, high = self.band
        if not math.isfinite(self.value) or not math.isfinite(high):
            return False
        return self.value > high if self.higher_is_better else self.value < low

    def margin_over_others(self) -> float:
        """How far the vector is ahead of the best other trait's vector (nan without others)."""
        values = [v for v in (_finite(x) for x in self.others.values()) if math.isfinite(v)]
        if not values or not math.isfinite(self.value):
            return math.nan
        if self.higher_is_better:
            return float(self.value - max(values))
        return float(min(values) - self.value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the value, the random band, percentile and count, the other traits, the flipped value."""
        low, high = self.band
        return {
            "metric": self.metric,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "random_n": int(self._random().size),
            "random_p5": low,
            "random_p95": high,
            "random_mean": float(np.mean(self._random())) if self._random().size else math.nan,
            "percentile": self.percentile,
            "beats_random": self.beats_random,
            "others": dict(self.others),
            "margin_over_others": self.margin_over_others(),
            "flipped": self.flipped,
            "random": [float(v) for v in self.random],
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Baseline:
        """The Baseline back from its :meth:`to_dict` (derived fields are recomputed)."""
        return cls(
            metric=str(record["metric"]),
            value=_finite(record["value"]),
            random=[_finite(v) for v in record.get("random", [])],
            others={str(k): _finite(v) for k, v in record.get("others", {}).items()},
            flipped=None if record.get("flipped") is None else _finite(record["flipped"]),
            higher_is_better=bool(record.get("higher_is_better", True)),
        )

    def summary(self) -> str:
        """One line for tables and logs, e.g. ``r = 0.82 | random 5-95%: -0.10..0.31 (pct 99) | sycophancy 0.40``."""
        parts = [f"{self.metric} = {self.value:.3g}"]
        low, high = self.band
        if math.isfinite(low):
            parts.append(f"random 5-95%: {low:.3g}..{high:.3g} (pct {self.percentile:.0f}, n={self._random().size})")
        elif self.random:
            parts.append(f"random: undefined for all {len(self.random)} directions")
        if self.others:
            parts.append(", ".join(f"{name} {_finite(v):.3g}" for name, v in self.others.items()))
        if self.flipped is not None:
            parts.append(f"flipped {self.flipped:.3g}")
        return " | ".join(parts)


def compare(
    metric: str,
    value: Any,
    random: Sequence[Any] = (),
    *,
    others: Mapping[str, Any] | None = None,
    flipped: Any = None,
    higher_is_better: bool = True,
) -> Baseline:
    """Bundle a vector's measurement with its controls' measurements (see :class:`Baseline`)."""
    return Baseline(
        metric=metric,
        value=_finite(value),
        random=[_finite(v) for v in random],
        others={str(name): _finite(v) for name, v in (others or {}).items()},
        flipped=None if flipped is None else _finite(flipped),
        higher_is_better=higher_is_better,
    )


def layer_controls(vector: Any, layer: int, k: int, *, seed: int = 0) -> Float[Tensor, "k d_model"]:
    """The ``k`` random control directions of ``vector`` at ``layer``: rows ``[:, layer]`` of :func:`random_like`.

    ``vector``: a PersonaVector, a ``[n_layers + 1, d_model]`` tensor (row ``layer`` is used), or one ``[d_model]``
    direction (``layer`` is then ignored: ``k`` seeded directions of its norm). The same ``(shape, k, seed)`` gives
    the same directions for every trait, so every analysis of a run compares its vectors with one set of controls.
    """
    tensor = getattr(vector, "vectors", vector)
    if not isinstance(tensor, Tensor) or tensor.ndim not in (1, 2):
        raise ValueError(
            f"layer_controls needs a PersonaVector, a [n_layers + 1, d_model] tensor or a [d_model] "
            f"direction, got {type(tensor).__name__}{tuple(getattr(tensor, 'shape', ()))}"
        )
    if tensor.ndim == 1:
        return random_directions(int(tensor.shape[0]), k, seed=seed, norm=float(tensor.detach().float().norm()))
    if not 0 <= int(layer) < tensor.shape[0]:
        raise ValueError(f"layer {layer} is outside the vector's rows 0..{tensor.shape[0] - 1}")
    return random_like(tensor, k, seed=seed)[:, int(layer)]


def compare_measure(
    metric: str,
    measure: Callable[[Tensor], Any],
    vector: Float[Tensor, "..."],
    random: Float[Tensor, "k ..."] | None = None,
    *,
    others: Mapping[str, Tensor] | None = None,
    flip: bool = True,
    higher_is_better: bool = True,
) -> Baseline:
    """One :class:`Baseline` from per-direction data: ``measure(data)`` gives the metric of one direction's data.

    ``vector``: the persona vector's data (e.g. its projections ``[n]``); ``random``: the same data for each random
    direction (``[k, n]``, e.g. from :func:`project_rows`); ``others``: the other traits' data by name; ``flip``:
    also measure the sign-flipped vector (``measure(-vector)``: data linear in the direction, as projections)."""
    return compare(
        metric,
        measure(vector),
        [] if random is None else [measure(row) for row in random],
        others={name: measure(data) for name, data in (others or {}).items()},
        flipped=measure(-vector) if flip else None,
        higher_is_better=higher_is_better,
    )


def baselines_to_dict(baselines: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready nested baselines: every :class:`Baseline` (at any depth of dicts) as its :meth:`Baseline.to_dict`."""
    return {
        str(key): (value.to_dict() if isinstance(value, Baseline) else baselines_to_dict(value))
        for key, value in baselines.items()
    }


# ------------------------------------------------------------------------------------------ the one rule
def _statistic(values: np.ndarray, *, two_sided: bool, center: float, higher_is_better: bool) -> np.ndarray:
    """What "further" means: ``|x - center|`` two-sided, else ``x - center`` (negated when lower is better)."""
    shifted = values - center
    if two_sided:
        return np.abs(shifted)
    return shifted if higher_is_better else -shifted


@dataclass
class ControlVerdict:
    """A value against ``n`` control values (e.g. random directions of the same norm), at a stated percentile.

    ``statistic`` is what is compared (``|value - center|`` two-sided, else the signed distance from ``center`` in
    the "better" direction); ``threshold`` the controls' ``percentile``-th statistic; ``rank`` the share (0-100) of
    controls whose statistic the value's exceeds (ties count half); ``passed`` is ``statistic > threshold``."""

    value: float
    statistic: float
    threshold: float
    rank: float
    n: int
    percentile: float
    two_sided: bool
    center: float = 0.0
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        return bool(math.isfinite(self.statistic) and self.statistic > self.threshold)

    def summary(self) -> str:
        """One line, e.g. ``0.81 (statistic 0.81) vs |random - 0| p95 0.42 (rank 100.0, n=200): beats``."""
        lower = "" if self.higher_is_better else " (lower)"
        what = f"|random - {self.center:g}|" if self.two_sided else f"random{lower}"
        if self.center and not self.two_sided:
            what += f" - {self.center:g}"
        return (
            f"{self.value:.3g} (statistic {self.statistic:.3g}) vs {what} p{self.percentile:g} "
            f"{self.threshold:.3g} (rank {self.rank:.1f}, n={self.n}): "
            f"{'beats' if self.passed else 'does not beat'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "rank": self.rank,
            "n": self.n,
            "percentile": self.percentile,
            "two_sided": self.two_sided,
            "center": self.center,
            "higher_is_better": self.higher_is_better,
            "passed": self.passed,
        }


def beats_controls(
    value: Any,
    controls: Sequence[Any],
    *,
    two_sided: bool,
    percentile: float = 95.0,
    center: float = 0.0,
    higher_is_better: bool = True,
) -> ControlVerdict:
    """Whether ``value`` lies beyond the ``percentile``-th percentile of its ``controls`` (the one rule for claims).

    ``two_sided=True`` where the sign is not fixed beforehand: ``|value - center|`` against ``|control - center|``
    (``center``: what no effect gives, 0 for a correlation or a shift, 0.5 for an AUROC). ``two_sided=False``: the
    signed distance from ``center``, in the direction ``higher_is_better`` says. Non-finite controls are dropped; a
    non-finite value never passes. Raises when the controls cannot resolve the percentile (fewer than
    ``100 / (100 - percentile)`` finite controls: the percentile would be their maximum or beyond)."""
    percentile = float(percentile)
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must lie strictly between 0 and 100, got {percentile!r}")
    values = np.asarray([_finite(v) for v in controls], dtype=float)
    values = values[np.isfinite(values)]
    needed = math.ceil(100.0 / (100.0 - percentile) - 1e-9)
    if values.size < needed:
        raise ValueError(
            f"{values.size} finite control values cannot resolve percentile {percentile:g}: draw at "
            f"least {needed} control directions (e.g. random_like(vector, k={max(needed, 100)}))"
        )
    stats = _statistic(values, two_sided=two_sided, center=center, higher_is_better=higher_is_better)
    value_f = _finite(value)
    statistic = float(
        _statistic(np.asarray([value_f]), two_sided=two_sided, center=center, higher_is_better=higher_is_better)[0]
    )
    if math.isfinite(statistic):
        rank = float(100.0 * (np.sum(stats < statistic) + 0.5 * np.sum(stats == statistic)) / stats.size)
    else:
        rank = math.nan
    return ControlVerdict(
        value=value_f,
        statistic=statistic,
        threshold=float(np.percentile(stats, percentile)),
        rank=rank,
        n=int(stats.size),
        percentile=percentile,
        two_sided=two_sided,
        center=float(center),
        higher_is_better=higher_is_better,
    )


@dataclass
class OthersVerdict:
    """A value against every other trait's vector: ``passed`` when its statistic leads every other's by ``margin``.

    ``statistics`` maps each other trait to its compared statistic (``|value - center|`` when two-sided);
    ``lead`` is the value's statistic minus the best other's (nan without others)."""

    value: float
    statistic: float
    others: dict[str, float]
    statistics: dict[str, float]
    margin: float
    two_sided: bool
    center: float = 0.0

    @property
    def best_other(self) -> str | None:
        finite = {k: v for k, v in self.statistics.items() if math.isfinite(v)}
        return max(finite, key=finite.__getitem__) if finite else None

    @property
    def lead(self) -> float:
        best = self.best_other
        if best is None or not math.isfinite(self.statistic):
            return math.nan
        return float(self.statistic - self.statistics[best])

    @property
    def passed(self) -> bool:
        if not self.others or not math.isfinite(self.statistic):
            return False
        if any(not math.isfinite(v) for v in self.statistics.values()):
            return False  # an undefined other cannot be said to lose
        return bool(self.lead > self.margin)

    def summary(self) -> str:
        others = ", ".join(f"{k} {v:.3g}" for k, v in self.others.items())
        return (
            f"{self.value:.3g} vs other traits ({others}){' by |value|' if self.two_sided else ''}: lead "
            f"{self.lead:.3g} over {self.best_other} (needs > {self.margin:g}): "
            f"{'beats' if self.passed else 'does not beat'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "statistic": self.statistic,
            "others": dict(self.others),
            "lead": self.lead,
            "best_other": self.best_other,
            "margin": self.margin,
            "two_sided": self.two_sided,
            "center": self.center,
            "passed": self.passed,
        }


def beats_others(
    value: Any,
    others: Mapping[str, Any],
    *,
    two_sided: bool = True,
    margin: float = 0.0,
    center: float = 0.0,
    higher_is_better: bool = True,
) -> OthersVerdict:
    """Whether ``value`` leads every other trait's vector's value by more than ``margin``.

    ``two_sided=True`` (the default: another trait's vector has no sign fixed relative to this trait) compares
    ``|value - center|`` with ``|other - center|``, so a negated vector that tracks the quantity as well as this one
    is as close as it really is, never far behind. An undefined (nan) other, or no others at all, is not a pass."""
    if not others:
        raise ValueError(
            "beats_others needs at least one other trait's value; with one trait there is no "
            "cross-trait control (extract a second trait's vector)"
        )
    value_f = _finite(value)
    finite_others = {str(k): _finite(v) for k, v in others.items()}

    def stat(x: float) -> float:
        return float(
            _statistic(np.asarray([x]), two_sided=two_sided, center=center, higher_is_better=higher_is_better)[0]
        )

    return OthersVerdict(
        value=value_f,
        statistic=stat(value_f),
        others=finite_others,
        statistics={k: stat(v) for k, v in finite_others.items()},
        margin=float(margin),
        two_sided=two_sided,
        center=float(center),
    )
