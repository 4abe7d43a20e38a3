"""The controls figure: each measurement of a persona vector beside its random band, the other traits' vectors and
the flipped vector (from :class:`persona_lens.core.controls.Baseline` objects or their ``to_dict()`` JSON)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

__all__ = ["baseline_figure", "baseline_note", "cosine_figure", "cosines_figures"]

_OTHERS = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def _record(baseline: Any) -> dict[str, Any]:
    return baseline.to_dict() if hasattr(baseline, "to_dict") else dict(baseline)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def baseline_figure(
    baselines: Mapping[str, Any],
    *,
    title: str = "The persona vector beside its controls",
    vector: str = "persona vector",
) -> go.Figure:
    """One row per measurement (``baselines``: label -> Baseline or its dict): the random directions' values
    (grey points) and their 5-95% band (grey bar), the other traits' vectors (coloured circles), the flipped vector
    (cross) and the persona vector (red diamond), with the percentile in the row label."""
    figure = go.Figure()
    labels = []
    shown: set[str] = set()
    for label, baseline in baselines.items():
        record = _record(baseline)
        row = f"{label} (pct {record['percentile']:.0f})" if _finite(record.get("percentile")) else str(label)
        labels.append(row)
        low, high = record.get("random_p5"), record.get("random_p95")
        if _finite(low) and _finite(high):
            figure.add_trace(
                go.Scatter(
                    x=[low, high],
                    y=[row, row],
                    mode="lines",
                    line={"color": "#bbbbbb", "width": 14},
                    name="random 5-95%",
                    legendgroup="band",
                    showlegend="band" not in shown,
                    hoverinfo="skip",
                )
            )
            shown.add("band")
        values = [v for v in record.get("random", []) if _finite(v)]
        if values:
            figure.add_trace(
                go.Scatter(
                    x=values,
                    y=[row] * len(values),
                    mode="markers",
                    name="random directions",
                    legendgroup="random",
                    showlegend="random" not in shown,
                    marker={"color": "#777777", "size": 5, "opacity": 0.5},
                    hovertemplate="random %{x:.3g}<extra></extra>",
                )
            )
            shown.add("random")
        for c, (other, value) in enumerate(record.get("others", {}).items()):
            if _finite(value):
                figure.add_trace(
                    go.Scatter(
                        x=[value],
                        y=[row],
                        mode="markers",
                        name=other,
                        legendgroup=other,
                        showlegend=other not in shown,
                        marker={"color": _OTHERS[c % len(_OTHERS)], "size": 11},
                        hovertemplate=f"{other} %{{x:.3g}}<extra></extra>",
                    )
                )
                shown.add(other)
        if _finite(record.get("flipped")):
            figure.add_trace(
                go.Scatter(
                    x=[record["flipped"]],
                    y=[row],
                    mode="markers",
                    name="flipped vector",
                    legendgroup="flipped",
                    showlegend="flipped" not in shown,
                    marker={"color": "black", "size": 10, "symbol": "x"},
                    hovertemplate="flipped %{x:.3g}<extra></extra>",
                )
            )
            shown.add("flipped")
        if _finite(record.get("value")):
            figure.add_trace(
                go.Scatter(
                    x=[record["value"]],
                    y=[row],
                    mode="markers",
                    name=vector,
                    legendgroup="v",
                    showlegend="v" not in shown,
                    marker={
                        "color": "#d62728",
                        "size": 15,
                        "symbol": "diamond",
                        "line": {"width": 1, "color": "black"},
                    },
                    hovertemplate=f"{vector} %{{x:.3g}}<extra></extra>",
                )
            )
            shown.add("v")
    figure.update_layout(
        title=title,
        template="plotly_white",
        xaxis_title="value",
        yaxis={"categoryorder": "array", "categoryarray": labels[::-1]},
        height=200 + 60 * max(1, len(labels)),
    )
    return figure


def baseline_note(baseline: Any) -> str:
    """A short line for a figure's title: ``random 5-95% a..b, pct p``."""
    record = _record(baseline)
    low, high, pct = record.get("random_p5"), record.get("random_p95"), record.get("percentile")
    if not (_finite(low) and _finite(high)):
        return "no random control"
    return f"random 5-95% {low:.2f}..{high:.2f}, pct {pct:.0f}"


def cosine_figure(cosines: Any, *, title: str = "Cosine between the traits' vectors per layer") -> go.Figure:
    """One line per pair of traits (cosine vs layer) over the random directions' 5-95% band (grey), from a
    :class:`~persona_lens.experiments.extract.TraitCosines` or its ``to_json()``."""
    data = cosines.to_json() if hasattr(cosines, "to_json") else dict(cosines)
    layers = [row["layer"] for row in data["layers"]]
    figure = go.Figure()
    low = [row["random_p5"] for row in data["layers"]]
    high = [row["random_p95"] for row in data["layers"]]
    if any(_finite(v) for v in high):
        figure.add_trace(
            go.Scatter(
                x=layers + layers[::-1],
                y=high + low[::-1],
                fill="toself",
                mode="lines",
                line={"width": 0},
                fillcolor="rgba(150,150,150,0.35)",
                name="random 5-95%",
                hoverinfo="skip",
            )
        )
    pairs = list(data["layers"][0]["pairs"]) if data["layers"] else []
    for c, pair in enumerate(pairs):
        figure.add_trace(
            go.Scatter(
                x=layers,
                y=[row["pairs"][pair] for row in data["layers"]],
                mode="lines+markers",
                name=pair,
                line={"color": _OTHERS[c % len(_OTHERS)]},
            )
        )
    figure.update_layout(
        title=title, template="plotly_white", xaxis_title="layer", yaxis_title="cosine", yaxis={"range": [-1.05, 1.05]}
    )
    return figure


def cosines_figures(cosines: Any) -> dict[str, go.Figure]:
    """Every figure of ``extract --against`` from its :class:`~persona_lens.experiments.extract.TraitCosines` (fresh
    or loaded from its folder), keyed by file name: ``cosines.html``."""
    return {
        "cosines.html": cosine_figure(
            cosines, title=f"Cosine of {cosines.traits[0]!r} with the other traits' vectors per layer"
        )
    }
