"""Plotly figures: steering curves, projection histograms, scatter plots, token-coloured text, the persona space.

Every function draws from a result (loaded from its folder, see :mod:`persona_lens.experiments`), never from a
model. The names below are re-exported lazily (importing ``persona_lens.viz`` loads no plotly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "persona_lens.viz.figures": ["write_figure", "show", "png_export_available"],
        "persona_lens.viz.static": ["figure_svg"],
        "persona_lens.viz.steering": ["plot_steering_curves"],
        "persona_lens.viz.projections": [
            "token_projection_html",
            "write_token_projection_html",
            "sweep_figure",
            "shift_figure",
            "histogram_figure",
        ],
        "persona_lens.viz.controls": ["baseline_figure", "baseline_note", "cosine_figure"],
        "persona_lens.viz.space": ["plot_variance_explained", "plot_role_map", "plot_drift"],
    },
)

if TYPE_CHECKING:
    from persona_lens.viz.controls import baseline_figure, baseline_note, cosine_figure
    from persona_lens.viz.figures import png_export_available, show, write_figure
    from persona_lens.viz.projections import (
        histogram_figure,
        shift_figure,
        sweep_figure,
        token_projection_html,
        write_token_projection_html,
    )
    from persona_lens.viz.space import plot_drift, plot_role_map, plot_variance_explained
    from persona_lens.viz.static import figure_svg
    from persona_lens.viz.steering import plot_steering_curves
