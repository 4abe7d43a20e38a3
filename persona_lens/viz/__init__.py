"""Plotly figures: steering curves, projection histograms, scatter plots, token-coloured text."""

from persona_lens.viz.figures import write_figure

__all__ = ["write_figure"]
