"""The browser-free SVG beside each notebook figure: valid SVG that draws every data point of the figure."""

import xml.etree.ElementTree as ET

import plotly.graph_objects as go
import pytest

from persona_lens.viz.static import figure_svg

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg):
    return ET.fromstring(svg)


def test_bars_one_rect_per_value_with_heights_in_proportion():
    values = [-16.0, -15.5, -12.0, -4.0]
    fig = go.Figure(go.Bar(x=["0", "1", "2", "3"], y=values)).update_layout(
        title="projection <by> prompt", xaxis_title="system prompt", yaxis_title="projection"
    )
    root = _parse(figure_svg(fig))
    bars = [r for r in root.iter(f"{NS}rect") if r.get("class") == "bar"]
    assert len(bars) == 4
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] / heights[3] == pytest.approx(16.0 / 4.0, rel=0.02)
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "projection <by> prompt" in texts and "system prompt" in texts and "3" in texts


def test_lines_and_markers_with_a_legend():
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1, 2], y=[10, 50, 90], name="trait"),
            go.Scatter(x=[0, 1, 2], y=[100, 90, None], name="coherence", mode="markers"),
        ]
    )
    root = _parse(figure_svg(fig))
    lines = [p for p in root.iter(f"{NS}polyline") if p.get("class") == "line"]
    markers = [c for c in root.iter(f"{NS}circle") if c.get("class") == "marker"]
    assert len(lines) == 1  # the markers-only trace draws no line
    assert len(markers) == 3 + 2  # None is skipped
    ys = [float(v.split(",")[1]) for v in lines[0].get("points").split()]
    assert ys[0] > ys[1] > ys[2]  # higher values sit higher (smaller y)
    assert {"trait", "coherence"} <= {t.text for t in root.iter(f"{NS}text")}


def test_unsupported_traces_are_refused():
    with pytest.raises(ValueError, match="heatmap"):
        figure_svg(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))


def test_every_notebook_figure_is_shown_with_its_static_fallback():
    """A bare plotly figure as a cell's value renders as nothing on GitHub; each figure goes through show()."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        cells = [("".join(c["source"])) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        with_figures = [c for c in cells if "go.Figure(" in c or re.search(r"\bplot_\w+\(", c)]
        assert with_figures, path
        for cell in with_figures:
            last = cell.rstrip().splitlines()[-1]
            assert "show(" in cell and last.strip() not in ("fig", "fig.show()"), (path.name, cell[-200:])
