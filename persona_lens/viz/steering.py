"""Layer-wise steering curves: trait score against coefficient, one curve per layer, coherence below."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["plot_steering_curves", "sweep_figures"]


def plot_steering_curves(
    cells: Sequence[Any],
    baseline: Any,
    *,
    chosen: Any = None,
    title: str = "",
    x: str = "relative",
    coherence_threshold: float | None = 75.0,
) -> Any:
    """A plotly figure from sweep cells (objects with ``layer``, ``coef_relative``, ``coef_raw``, ``trait_mean``,
    ``coherence_mean``); the unsteered ``baseline`` is every curve's point at coefficient 0."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    attr = "coef_relative" if x == "relative" else "coef_raw"
    x_title = "coefficient (relative: |a v_l| / median |h_l|)" if x == "relative" else "coefficient a (raw units)"
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.6, 0.4],
        subplot_titles=("trait score (0-100)", "coherence (0-100)"),
    )
    layers = sorted({c.layer for c in cells if c.layer is not None})
    colors = sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    for color, layer in zip(colors, layers):
        row = sorted((c for c in cells if c.layer == layer), key=lambda c: getattr(c, attr))
        xs = [0.0, *[getattr(c, attr) for c in row]]
        hover = f"layer {layer}<br>coef %{{x:.3g}}<br>%{{y:.1f}}"
        for subplot, key, show in ((1, "trait_mean", True), (2, "coherence_mean", False)):
            ys = [getattr(baseline, key), *[getattr(c, key) for c in row]]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"layer {layer}",
                    legendgroup=str(layer),
                    showlegend=show,
                    line={"color": color},
                    hovertemplate=hover,
                ),
                row=subplot,
                col=1,
            )
    if coherence_threshold is not None:
        fig.add_hline(
            y=coherence_threshold,
            line_dash="dot",
            line_color="grey",
            row=2,
            col=1,
            annotation_text=f"coherence threshold {coherence_threshold:g}",
        )
    if chosen is not None:
        fig.add_trace(
            go.Scatter(
                x=[getattr(chosen, attr)],
                y=[chosen.trait_mean],
                mode="markers",
                marker={"symbol": "star", "size": 16, "color": "crimson"},
                name=f"chosen: layer {chosen.layer}",
            ),
            row=1,
            col=1,
        )
    fig.update_yaxes(range=[-2, 102], row=1, col=1)
    fig.update_yaxes(range=[-2, 102], row=2, col=1)
    fig.update_xaxes(title_text=x_title, row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=700, legend_title_text="steered layer")
    return fig


def sweep_figures(result: Any, controls: Any = None) -> dict[str, Any]:
    """Every figure of a steering sweep (a :class:`~persona_lens.experiments.steering_sweep.SteeringSweepResult`,
    fresh or loaded from its folder, and its :class:`SteeringControls` when run), keyed by file name: ``sweep.html``
    (the steering curves) and ``controls.html`` (the chosen cell beside its controls)."""
    from persona_lens.viz.controls import baseline_figure

    config = result.config
    figures = {
        "sweep.html": plot_steering_curves(
            result.cells,
            result.baseline,
            chosen=result.chosen,
            title=f"Steering {result.model_name} with the {result.trait!r} vector ({config.positions} positions)",
            x=config.coefficient_mode,
            coherence_threshold=config.coherence_threshold,
        )
    }
    if controls is not None:
        figures["controls.html"] = baseline_figure(
            controls.baselines,
            vector=result.trait,
            title=f"Steering at layer {controls.layer}, coefficient {controls.coef_relative:g} relative: the vector "
            "beside random vectors of its norm",
        )
    return figures
