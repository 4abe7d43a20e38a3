"""Writing figures: self-contained HTML always (works offline), PNG where kaleido and Chromium are available."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from persona_lens.core.io import atomic_output

__all__ = ["write_figure", "png_export_available", "show"]

log = logging.getLogger(__name__)


def png_export_available() -> bool:
    """True when plotly can render PNG here (kaleido installed and a Chromium browser found)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    import shutil

    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")) or bool(
        os.environ.get("BROWSER_PATH")
    )


def write_figure(figure: Any, path: str | Path, *, png: bool | None = None) -> list[Path]:
    """Write ``figure`` to ``path`` (``.html``), plus a ``.png`` beside it when possible. Returns the paths written.

    ``png=None`` writes PNG only when :func:`png_export_available`; ``png=True`` insists (raises if it cannot).
    """
    html = Path(path).with_suffix(".html")
    with atomic_output(html) as tmp:
        figure.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    written = [html]
    if png is None:
        png = png_export_available()
    if png:
        target = html.with_suffix(".png")
        try:
            figure.write_image(str(target), width=1000, height=600)
            written.append(target)
        except Exception as error:  # kaleido/browser problems must not lose the HTML figure
            if png is True and not png_export_available():
                raise
            log.warning("PNG export failed (%s); the HTML figure is at %s", error, html)
    return written


def show(figure: Any) -> None:
    """Display ``figure`` in a notebook twice: the interactive plotly figure, and beside it a static image for
    renderers that run no JavaScript (GitHub, nbconvert to Markdown/PDF): PNG when kaleido and Chromium are
    available here, else the browser-free SVG of :func:`persona_lens.viz.static.figure_svg`."""
    from IPython.display import SVG, Image, display

    display(figure)
    if png_export_available():
        try:
            display(Image(figure.to_image(format="png", width=900, height=500)))
            return
        except Exception as error:  # a broken browser must not lose the figure: fall back to the SVG
            log.warning("PNG export failed (%s); showing the SVG fallback", error)
    from persona_lens.viz.static import figure_svg

    display(SVG(figure_svg(figure)))
