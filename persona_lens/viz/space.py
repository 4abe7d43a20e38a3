"""Persona space figures (plotly), from plain numbers: variance explained per layer, the role map on PC1/PC2 coloured
by the projection on the Assistant axis (trait vectors drawn as arrows in the same plane), and a conversation's
trajectory on the axis with the default persona's band."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_variance_explained", "plot_role_map", "plot_drift", "space_figures", "drift_figures"]


def plot_variance_explained(explained: Sequence[Sequence[float]], *, n_components: int = 3, title: str = "") -> Any:
    """Share of the role vectors' variance each of the first ``n_components`` explains, against the layer
    (``explained[layer][k]``)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    layers = list(range(len(explained)))
    width = min(n_components, min((len(row) for row in explained), default=0))
    for k in range(width):
        fig.add_trace(go.Scatter(x=layers, y=[row[k] for row in explained], mode="lines+markers", name=f"PC{k + 1}"))
    fig.update_layout(
        title=title or "variance of the role vectors explained, per layer",
        template="plotly_white",
        xaxis_title="layer",
        yaxis_title="share of variance",
        yaxis_range=[0, 1],
    )
    return fig


def plot_role_map(
    names: Sequence[str],
    pc1: Sequence[float],
    pc2: Sequence[float],
    projection: Sequence[float],
    *,
    default: str | None = None,
    traits: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
) -> Any:
    """Roles at their (PC1, PC2) coordinates, coloured by their projection on the Assistant axis; the ``default``
    role drawn as a star; each trait vector as an arrow from the origin to its (PC1, PC2) components (scaled to the
    roles' spread)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=list(pc1),
            y=list(pc2),
            mode="markers+text",
            text=list(names),
            textposition="top center",
            name="roles",
            marker={
                "size": [18 if n == default else 11 for n in names],
                "symbol": ["star" if n == default else "circle" for n in names],
                "color": list(projection),
                "colorscale": "RdBu",
                "showscale": True,
                "colorbar": {"title": "axis projection"},
            },
            hovertemplate="%{text}<br>PC1 %{x:.3g}<br>PC2 %{y:.3g}<extra></extra>",
        )
    )
    if traits:
        spread = max([abs(v) for v in [*pc1, *pc2]] or [1.0])
        longest = max([max(abs(x), abs(y)) for x, y in traits.values()] or [1.0]) or 1.0
        scale = spread / longest
        for name, (x, y) in traits.items():
            fig.add_annotation(
                x=x * scale,
                y=y * scale,
                ax=0,
                ay=0,
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                showarrow=True,
                arrowhead=2,
                arrowcolor="seagreen",
                text=f"trait: {name}",
                font={"color": "seagreen"},
            )
    fig.update_layout(
        title=title or "roles on PC1 / PC2", template="plotly_white", xaxis_title="PC1", yaxis_title="PC2"
    )
    return fig


def space_figures(report: Any) -> dict[str, Any]:
    """Every figure of ``space build`` from its :class:`~persona_lens.experiments.space.SpaceReport` (fresh or
    loaded), keyed by file name: ``variance.html`` and ``roles_layer<layer>.html``."""
    data, where = report.alignment, report.role_map
    layer = where["layer"]
    rows = data["layers"][layer]["roles"]
    names = where["names"]
    return {
        "variance.html": plot_variance_explained(
            [row["explained"] for row in data["layers"]],
            title=f"{data['model']}: variance of the role vectors explained",
        ),
        f"roles_layer{layer}.html": plot_role_map(
            names,
            [rows[n]["pc1"] for n in names],
            where["pc2"],
            [rows[n]["projection"] for n in names],
            default=data["default_role"],
            traits={k: (x, y) for k, (x, y) in where["traits"].items()},
            title=f"{data['model']}, layer {layer}",
        ),
    }


def drift_figures(report: Any) -> dict[str, Any]:
    """The figure of ``space drift`` from its :class:`~persona_lens.experiments.space.DriftReport` (fresh or
    loaded), keyed by file name: ``drift.html``."""
    data = report.data
    layer, band = data["layer"], data["default_band"]
    title = f"{data['model']}, layer {layer}" if data.get("model") else f"layer {layer}"
    return {
        "drift.html": plot_drift(
            data["turn_projections_at_layer"],
            (band["p5"][layer], band["p95"][layer]),
            tokens=data["token_projections"],
            labels=report.replies,
            title=title,
        )
    }


def plot_drift(
    turns: Sequence[float],
    band: tuple[float, float],
    *,
    tokens: Sequence[Sequence[float]] = (),
    labels: Sequence[str] = (),
    title: str = "",
) -> Any:
    """A conversation on the Assistant axis: one point per assistant turn (mean over its tokens) with the default
    persona's 5-95% band; below, every response token's projection, turn after turn."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = 2 if tokens else 1
    fig = make_subplots(
        rows=rows,
        cols=1,
        vertical_spacing=0.12,
        subplot_titles=("per turn (mean over the reply's tokens)", "per token")[:rows],
    )
    xs = list(range(1, len(turns) + 1))
    fig.add_trace(
        go.Scatter(
            x=xs + xs[::-1],
            y=[band[1]] * len(xs) + [band[0]] * len(xs),
            fill="toself",
            fillcolor="rgba(70,130,180,0.2)",
            line={"width": 0},
            name="default persona 5-95%",
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=list(turns),
            mode="lines+markers",
            name="turn",
            text=list(labels) or None,
            hovertemplate="turn %{x}<br>%{y:.3g}<br>%{text}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if tokens:
        position, token_x, token_y, turn_of = 0, [], [], []
        for turn, values in enumerate(tokens, start=1):
            for value in values:
                token_x.append(position)
                token_y.append(value)
                turn_of.append(turn)
                position += 1
        fig.add_trace(
            go.Scatter(
                x=token_x,
                y=token_y,
                mode="lines",
                name="token",
                marker={"color": turn_of},
                customdata=turn_of,
                hovertemplate="token %{x}, turn %{customdata}<br>%{y:.3g}<extra></extra>",
            ),
            row=2,
            col=1,
        )
        fig.update_xaxes(title_text="response token (all turns)", row=2, col=1)
    fig.update_xaxes(title_text="assistant turn", row=1, col=1)
    fig.update_yaxes(title_text="projection on the axis", row=1, col=1)
    fig.update_layout(
        title=title or "drift on the Assistant axis", template="plotly_white", height=700 if tokens else 450
    )
    return fig
