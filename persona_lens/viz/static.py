"""A static SVG rendition of our plotly figures that needs no browser (kaleido needs Chromium).

Notebook outputs rendered where JavaScript does not run (GitHub's notebook view, ``nbconvert`` to Markdown or PDF,
some viewers) show nothing for a plotly figure; :func:`persona_lens.viz.figures.show` puts this SVG beside the
interactive figure. It draws what our figures use: bar traces (categorical x) and scatter traces (lines and/or
markers, numeric or categorical x), the title, axis titles, y ticks and a legend. Other trace types raise.
"""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["figure_svg"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure_svg(figure: Any, width: int = 720, height: int = 420) -> str:
    """An SVG document drawing ``figure`` (a plotly ``go.Figure`` of bar and scatter traces)."""
    traces = list(figure.data)
    for trace in traces:
        if trace.type not in ("bar", "scatter"):
            raise ValueError(f"figure_svg draws bar and scatter traces, not {trace.type!r}")
    layout = figure.layout
    points = [
        (list(t.x if t.x is not None else range(len(t.y))), [float("nan") if v is None else float(v) for v in t.y])
        for t in traces
    ]
    numeric_x = all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for xs, _ in points for x in xs
    ) and not any(t.type == "bar" for t in traces)
    categories: list[Any] = []
    if not numeric_x:
        for xs, _ in points:
            categories += [x for x in xs if x not in categories]
    ys = [y for _, values in points for y in values if y == y]
    if any(t.type == "bar" for t in traces):
        ys.append(0.0)
    y_ticks = _ticks(min(ys, default=0.0), max(ys, default=1.0))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    if numeric_x:
        xs_all = [float(x) for xs, _ in points for x in xs]
        x_lo, x_hi = min(xs_all, default=0.0), max(xs_all, default=1.0)
        x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    left, right, top, bottom = 70, width - 20, 50, height - 60
    named = [t for t in traces if t.name]
    if named:
        right -= 140

    def sx(x: Any) -> float:
        if numeric_x:
            return left + (float(x) - x_lo) / (x_hi - x_lo) * (right - left)
        return left + (categories.index(x) + 0.5) / len(categories) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    title = layout.title.text if layout.title and layout.title.text else ""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{_text(title)}</text>',
    ]
    for tick in y_ticks:
        y = sy(tick)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#444"/>')
    out.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#444"/>')
    x_labels = _ticks(x_lo, x_hi) if numeric_x else categories
    for label in x_labels:
        if numeric_x and not x_lo <= label <= x_hi:
            continue
        out.append(
            f'<text x="{sx(label):.1f}" y="{bottom + 16}" text-anchor="middle">'
            f"{_text(f'{label:g}' if numeric_x else label)}</text>"
        )
    x_title = layout.xaxis.title.text if layout.xaxis.title and layout.xaxis.title.text else ""
    y_title = layout.yaxis.title.text if layout.yaxis.title and layout.yaxis.title.text else ""
    out.append(f'<text x="{(left + right) / 2}" y="{height - 18}" text-anchor="middle">{_text(x_title)}</text>')
    out.append(
        f'<text transform="translate(16 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle">{_text(y_title)}</text>'
    )
    bars = [i for i, t in enumerate(traces) if t.type == "bar"]
    slot = (right - left) / max(len(categories), 1) * 0.8
    for index, (trace, (xs, values)) in enumerate(zip(traces, points)):
        colour = _COLOURS[index % len(_COLOURS)]
        if trace.type == "bar":
            bar_width = slot / len(bars)
            offset = -slot / 2 + bars.index(index) * bar_width
            for x, y in zip(xs, values):
                if y != y:
                    continue
                y0, y1 = sorted((sy(0.0), sy(y)))
                out.append(
                    f'<rect class="bar" x="{sx(x) + offset:.1f}" y="{y0:.1f}" width="{bar_width:.1f}" '
                    f'height="{max(y1 - y0, 0.5):.1f}" fill="{colour}"/>'
                )
            continue
        mode = trace.mode or "lines+markers"
        coords = [(sx(x), sy(y)) for x, y in zip(xs, values) if y == y]
        if "lines" in mode and len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            out.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if "markers" in mode:
            out += [f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>' for x, y in coords]
    for row, trace in enumerate(named):
        colour = _COLOURS[traces.index(trace) % len(_COLOURS)]
        y = top + 10 + row * 18
        out.append(f'<rect x="{right + 16}" y="{y - 8}" width="12" height="10" fill="{colour}"/>')
        out.append(f'<text x="{right + 34}" y="{y + 1}">{_text(trace.name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
