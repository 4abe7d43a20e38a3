"""Figures of monitoring, shift and screening: what they show, checked against the numbers they were given."""

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from persona_lens.experiments.monitor import ProjectionPrompt, ProjectionSweepResult, ProjectionSweepRow
from persona_lens.viz.figures import write_figure
from persona_lens.viz.projections import (
    histogram_figure,
    projection_colour,
    shift_figure,
    sweep_figure,
    token_projection_html,
    write_token_projection_html,
)


@dataclass
class Trace:  # the fields token_projection_html reads (a TokenTrace without a model behind it)
    pieces: list
    prompt_length: int
    projections: torch.Tensor
    traits: list


def test_projection_colour():
    assert projection_colour(float("nan"), 1.0) == "transparent"
    assert projection_colour(None, 1.0) == "transparent"
    assert projection_colour(2.0, 2.0).startswith("rgba(214,39,40,0.850")
    assert projection_colour(-1.0, 2.0).startswith("rgba(31,119,180,0.425")
    assert projection_colour(5.0, 2.0, center=5.0).endswith(",0.000)")
    assert projection_colour(9.0, 2.0) == projection_colour(3.0, 2.0)  # saturates


def test_token_html_colours_each_token_by_its_value():
    trace = Trace(
        ["<s>", "Q", ":", "a<b", " &", "\n", "z"],
        3,
        torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, float("nan"), 6.0], [0.0] * 7]),
        ["evil", "other"],
    )
    page = token_projection_html([trace], trait="evil")
    spans = re.findall(
        r'<span class="tok (prompt|reply)" style="background:([^"]+)" title="([^"]*)">(.*?)</span>', page
    )
    assert len(spans) == 7
    center = (1.0 + 2.0 + 3.0) / 3  # default: the mean over prompt tokens
    scale = max(abs(v - center) for v in (1, 2, 3, 4, 0, 6))
    for (kind, colour, _, _), value, index in zip(spans, trace.projections[0].tolist(), range(7)):
        assert kind == ("prompt" if index < 3 else "reply")
        assert colour == projection_colour(value, scale, center)
    assert spans[3][3] == "a&lt;b" and spans[4][3] == " &amp;" and "\u21b5<br>" in spans[5][3]
    assert "projection n/a" in spans[5][2]
    assert page.index("reply starts here") < page.index("a&lt;b")
    reply_only = token_projection_html([trace], trait=1, center=0.0, show_prompt=False)
    assert reply_only.count('class="tok ') == 4 and "Q</span>" not in reply_only


def test_write_token_html(tmp_path):
    trace = Trace(["a", "b"], 1, torch.tensor([[0.5, -0.5]]), ["t"])
    path = write_token_projection_html([trace], tmp_path / "x" / "t.html", title="T <1>")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "T &lt;1&gt;" in text


def _sweep():
    prompts = [ProjectionPrompt(f"c{c}", float(c), f"q{i}", ()) for c in range(3) for i in range(4)]
    projections = torch.tensor([[float(c) + 0.1 * i, -float(i)] for c in range(3) for i in range(4)])
    rows = [
        ProjectionSweepRow(k, p.condition, p.level, p.question, 0, {}, "", 10.0 * p.level + k % 3, True)
        for k, p in enumerate(prompts)
    ]
    return ProjectionSweepResult("system", ["evil", "other"], 5, "rule:x", prompts, projections, rows)


def test_sweep_figure_shows_each_prompt_and_condition_mean():
    result = _sweep()
    figure = sweep_figure(result, "evil")
    points = [t for t in figure.data if t.showlegend is not False]
    means = [t for t in figure.data if t.showlegend is False]
    assert [t.name for t in points] == ["c0", "c1", "c2"]
    assert list(points[1].x) == pytest.approx([1.0, 1.1, 1.2, 1.3])
    assert list(points[1].y) == [10.0 * 1 + k % 3 for k in range(4, 8)]
    assert [m.x[0] for m in means] == pytest.approx([0.15, 1.15, 2.15])
    corr = result.correlations("evil")
    assert f"{corr['overall']:.2f}" in figure.layout.title.text
    assert "other" in sweep_figure(result, "other").layout.xaxis.title.text


def test_shift_figure():
    figure = shift_figure(["a", "b", "c"], [0.1, 0.5, 0.9], [10.0, None, 40.0], trait="evil", r=0.97)
    assert list(figure.data[0].x) == [0.1, 0.5, 0.9] and list(figure.data[0].text) == ["a", "b", "c"]
    assert "r = 0.97, n = 2" in figure.layout.title.text


def test_histogram_counts_are_numpy_histograms_on_common_bins(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 300)
    b = np.concatenate([rng.normal(2, 1, 200), [np.nan, np.inf]])
    figure = histogram_figure({"a": a, "b": list(b)}, title="dP", xaxis="dp", nbins=20)
    bars = figure.data
    assert len(bars) == 2
    finite_b = b[np.isfinite(b)]
    edges = np.histogram_bin_edges(np.concatenate([a, finite_b]), bins=20)
    for bar, values in zip(bars, (a, finite_b)):
        counts, _ = np.histogram(values, bins=edges)
        assert list(bar.y) == counts.tolist()
        assert list(bar.x) == pytest.approx(((edges[:-1] + edges[1:]) / 2).tolist())
    assert bars[1].name.startswith("b (n=200")
    lines = [s for s in figure.layout.shapes]
    assert [s.x0 for s in lines] == pytest.approx([a.mean(), finite_b.mean()])
    assert figure.layout.barmode == "overlay"
    written = write_figure(figure, tmp_path / "h.html", png=False)
    assert written[0].exists()
    empty = histogram_figure({"none": [math.nan]}, title="x", xaxis="x")
    assert len(empty.data) == 0
