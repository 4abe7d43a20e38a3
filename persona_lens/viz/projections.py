"""Figures for monitoring, finetuning shift and data screening.

* :func:`token_projection_html`: text coloured token by token by its projection on a persona vector (red = towards
  the trait, blue = away), a self-contained HTML page with the value of each token on hover;
* :func:`sweep_figure`: projection vs judged score for a monitoring sweep, one colour per condition, plus the
  condition means;
* :func:`shift_figure`: finetuning shift vs trait score, one point per finetuned model;
* :func:`histogram_figure`: overlaid histograms (projection differences of several datasets).

Figures are plotly objects; write them with :func:`persona_lens.viz.figures.write_figure`.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from persona_lens.core.io import write_text_atomic

__all__ = [
    "projection_colour",
    "token_projection_html",
    "write_token_projection_html",
    "sweep_figure",
    "monitor_sweep_figures",
    "token_projection_page",
    "screen_figures",
    "shift_figure",
    "shift_figures",
    "histogram_figure",
]

_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def projection_colour(value: float | None, scale: float, center: float = 0.0) -> str:
    """CSS background for a projection: red above ``center``, blue below, opacity ``|value - center| / scale``."""
    if value is None or math.isnan(value) or scale <= 0:
        return "transparent"
    strength = min(1.0, abs(value - center) / scale)
    red, green, blue = (214, 39, 40) if value >= center else (31, 119, 180)
    return f"rgba({red},{green},{blue},{0.85 * strength:.3f})"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def _piece_html(piece: str) -> str:
    text = html.escape(piece).replace("\n", "\u21b5<br>")
    return text if text else "&#8203;"


def token_projection_html(
    traces: Sequence[Any],
    *,
    trait: str | int = 0,
    title: str = "Projection per token",
    center: float | str = "prompt",
    scale: float | None = None,
    show_prompt: bool = True,
) -> str:
    """A self-contained HTML page: each trace's tokens coloured by their projection on ``trait``.

    ``traces``: :class:`persona_lens.experiments.monitor.TokenTrace` objects (or anything with ``pieces``,
    ``prompt_length``, ``projections [k, n]`` and ``traits``). ``center``: the value drawn white: a number, or
    ``"prompt"`` for the mean projection over all prompt tokens shown (so the colour shows movement relative to the
    prompt). ``scale``: the distance from ``center`` drawn at full colour (default: the largest one in the page).
    """
    blocks = []
    all_values: list[float] = []
    prompt_values: list[float] = []
    chosen = []
    for trace in traces:
        index = trait if isinstance(trait, int) else list(trace.traits).index(trait)
        values = [float(v) for v in trace.projections[index].tolist()]
        chosen.append((trace, index, values))
        start = 0 if show_prompt else trace.prompt_length
        all_values += _finite(values[start:])
        prompt_values += _finite(values[: trace.prompt_length])
    if center == "prompt":
        middle = sum(prompt_values) / len(prompt_values) if prompt_values else 0.0
    elif isinstance(center, (int, float)):
        middle = float(center)
    else:
        raise ValueError(f"center must be a number or 'prompt', got {center!r}")
    if scale is None:
        scale = max((abs(v - middle) for v in all_values), default=1.0) or 1.0
    for number, (trace, index, values) in enumerate(chosen):
        spans = []
        for position, (piece, value) in enumerate(zip(trace.pieces, values)):
            if position < trace.prompt_length and not show_prompt:
                continue
            if position == trace.prompt_length:
                spans.append('<span class="boundary" title="reply starts here">\u25b6</span>')
            shown = "n/a" if math.isnan(value) else f"{value:.3f}"
            css = "prompt" if position < trace.prompt_length else "reply"
            spans.append(
                f'<span class="tok {css}" style="background:{projection_colour(value, scale, middle)}" '
                f'title="token {position}: {html.escape(repr(piece))} projection {shown}">'
                f"{_piece_html(piece)}</span>"
            )
        reply = _finite(values[trace.prompt_length :])
        mean_reply = f"{sum(reply) / len(reply):.3f}" if reply else "n/a"
        last_prompt = values[trace.prompt_length - 1] if trace.prompt_length else float("nan")
        blocks.append(
            f'<div class="trace"><div class="meta">#{number} \u00b7 trait <b>{html.escape(trace.traits[index])}</b>'
            f" \u00b7 last prompt token {last_prompt:.3f} \u00b7 mean over reply {mean_reply}</div>"
            f'<div class="text">{"".join(spans)}</div></div>'
        )
    legend = (
        f'<span style="background:{projection_colour(middle - scale, scale, middle)}">&nbsp;{middle - scale:.2f}'
        f'&nbsp;</span> <span>&nbsp;{middle:.2f}&nbsp;</span> <span style="background:'
        f'{projection_colour(middle + scale, scale, middle)}">&nbsp;{middle + scale:.2f}&nbsp;</span>'
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
.trace {{ border-top: 1px solid #ddd; padding: 0.8em 0; }}
.meta {{ color: #555; font-size: 0.9em; margin-bottom: 0.4em; }}
.text {{ font-family: ui-monospace, monospace; line-height: 1.7; white-space: pre-wrap; }}
.tok.prompt {{ color: #777; }}
.boundary {{ color: #999; padding: 0 0.3em; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Colour: projection of each token's residual stream on the unit persona vector (hover a token for its value).
Legend: {legend}</p>
{"".join(blocks)}
</body></html>
"""


def write_token_projection_html(traces: Sequence[Any], path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`token_projection_html` to ``path`` (atomically); returns the path."""
    return write_text_atomic(path, token_projection_html(traces, **kwargs))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def sweep_figure(result: Any, trait: str | None = None) -> go.Figure:
    """Projection (x) vs mean judged score (y) per prompt of a
    :class:`~persona_lens.experiments.monitor.ProjectionSweepResult`."""
    j = result._trait_index(trait)
    name = result.traits[j]
    scores = result.prompt_scores()
    figure = go.Figure()
    summary = {row["condition"]: row for row in result.summary()}
    for c, condition in enumerate(result.conditions()):
        index = [i for i, p in enumerate(result.prompts) if p.condition == condition]
        colour = _PALETTE[c % len(_PALETTE)]
        figure.add_trace(
            go.Scatter(
                x=[float(result.projections[i, j]) for i in index],
                y=[scores[i] for i in index],
                mode="markers",
                name=condition,
                marker={"color": colour, "size": 7, "opacity": 0.6},
                text=[result.prompts[i].question for i in index],
                hovertemplate="%{text}<br>%{x:.3f}, %{y:.1f}",
            )
        )
        row = summary[condition]
        if row["mean_score"] is not None:
            figure.add_trace(
                go.Scatter(
                    x=[row["mean_projection"][name]],
                    y=[row["mean_score"]],
                    mode="markers",
                    showlegend=False,
                    marker={"color": colour, "size": 16, "symbol": "diamond", "line": {"width": 1.5, "color": "black"}},
                    error_y={"type": "data", "array": [row["sem_score"] or 0.0], "visible": True},
                    hovertemplate=f"{condition} mean<br>%{{x:.3f}}, %{{y:.1f}}",
                )
            )
    corr = result.correlations(name)
    title = (
        f"{result.kind} sweep, layer {result.layer}: r = {_fmt(corr['overall'])} overall, "
        f"{_fmt(corr['within_condition'])} within condition (n = {corr['n_prompts']} prompts)"
    )
    baselines = getattr(result, "baselines", {}).get(name, {})
    if baselines:
        from persona_lens.viz.controls import baseline_note

        title += (
            "<br><sup>"
            + "; ".join(f"{metric.replace('_', ' ')}: {baseline_note(b)}" for metric, b in baselines.items())
            + "</sup>"
        )
    figure.update_layout(
        title=title,
        xaxis_title=f"projection of the last prompt token on {name}",
        yaxis_title=f"trait score ({result.judge_id})",
        template="plotly_white",
    )
    return figure


def shift_figure(
    labels: Sequence[str],
    shifts: Sequence[float],
    scores: Sequence[float | None],
    *,
    trait: str = "",
    score_name: str = "trait score",
    r: float | None = None,
    baseline: Any = None,
) -> go.Figure:
    """Finetuning shift (x) vs trait score (y), one labelled point per finetuned model. ``baseline``: the r's
    :class:`~persona_lens.core.controls.Baseline` (its random band goes under the title)."""
    figure = go.Figure(
        go.Scatter(
            x=list(shifts),
            y=list(scores),
            mode="markers+text",
            text=list(labels),
            textposition="top center",
            marker={"size": 11, "color": _PALETTE[0]},
            hovertemplate="%{text}<br>shift %{x:.3f}<br>score %{y:.1f}",
        )
    )
    title = f"Finetuning shift along {trait or 'the vector'} vs {score_name}"
    if r is not None and not math.isnan(r):
        title += f" (Pearson r = {r:.2f}, n = {sum(s is not None for s in scores)})"
    if baseline is not None:
        from persona_lens.viz.controls import baseline_note

        title += f"<br><sup>r {baseline_note(baseline)}</sup>"
    figure.update_layout(
        title=title,
        xaxis_title="shift of the last prompt token (finetuned - base) . unit vector",
        yaxis_title=score_name,
        template="plotly_white",
    )
    return figure


def shift_figures(study: Any) -> dict[tuple[str, str], go.Figure]:
    """Every figure of a :class:`~persona_lens.experiments.shift.ShiftStudy` (fresh or loaded from its folder),
    keyed ``(trait, "")`` for the shift-vs-score scatter and ``(trait, ".controls")`` for the shift beside its
    controls; none when no model has a score."""
    from persona_lens.viz.controls import baseline_figure

    scores = study.scores()
    if not any(s is not None for s in scores):
        return {}
    figures: dict[tuple[str, str], go.Figure] = {}
    for name in study.traits:
        corr = study.correlation(name)
        labels, shifts, ys = [r.label for r in study.results], study.shifts(name), list(scores)
        if study.base_evaluation is not None:
            labels, shifts, ys = [*labels, "base"], [*shifts, 0.0], [*ys, study.base_evaluation.mean_score]
        figures[name, ""] = shift_figure(
            labels,
            shifts,
            ys,
            trait=name,
            score_name=f"{study.trait or 'trait'} score",
            r=corr["pearson_r"] if corr["pearson_r"] is not None else math.nan,
            baseline=study.baseline(name),
        )
        figures[name, ".controls"] = baseline_figure(
            {
                "r(shift, score)": study.baseline(name),
                **{f"shift of {r.label}": r.baselines[name] for r in study.results},
            },
            title=f"Shift along {name} at layer {study.layer}, beside its controls",
            vector=name,
        )
    return figures


def monitor_sweep_figures(result: Any) -> dict[tuple[str, str], go.Figure]:
    """Every figure of a :class:`~persona_lens.experiments.monitor.ProjectionSweepResult` (fresh or loaded from its
    folder), keyed ``(trait, "")`` for projection vs score and ``(trait, ".controls")`` for the correlations beside
    their controls."""
    from persona_lens.viz.controls import baseline_figure

    figures: dict[tuple[str, str], go.Figure] = {}
    for name in result.traits:
        figures[name, ""] = sweep_figure(result, name)
        figures[name, ".controls"] = baseline_figure(
            {f"r {metric.replace('_', ' ')}": b for metric, b in result.baselines[name].items()},
            title=f"{result.kind} sweep at layer {result.layer}: r of {name} with the score, beside its controls",
            vector=name,
        )
    return figures


def token_projection_page(result: Any, *, show_prompt: bool = True) -> str:
    """One HTML page for a :class:`~persona_lens.experiments.monitor.TokenProjections` (fresh or loaded): the
    coloured tokens of every trace, one section per vector."""
    pages = [
        token_projection_html(
            result.traces, trait=name, title=f"Projection on {name} at layer {result.layer}", show_prompt=show_prompt
        )
        for name in result.traits
    ]
    body = "".join(page.split("<body>", 1)[1].rsplit("</body>", 1)[0] for page in pages)
    return pages[0].split("<body>", 1)[0] + "<body>" + body + "</body></html>\n"


def screen_figures(result: Any, folder: str | os.PathLike[str], *, bins: int = 50) -> dict[str, go.Figure]:
    """Every figure of a :class:`~persona_lens.experiments.screen_result.ScreenResult` (fresh or loaded), drawn from
    the scores files in its ``folder``, keyed by file name: per dataset and trait the histogram of dp and
    dp_last_prompt; with several datasets, per trait and score the datasets overlaid and their comparison beside its
    controls."""
    from persona_lens.core.controls import Baseline
    from persona_lens.viz.controls import baseline_figure

    out = Path(folder)
    figures: dict[str, go.Figure] = {}
    for name, summary in result.datasets.items():
        for trait in summary["traits"]:
            series = {f"{name} {key}": result.scores(out, name, trait, key) for key in ("dp", "dp_last_prompt")}
            figures[result.histogram_file(name, trait)] = histogram_figure(
                series,
                nbins=bins,
                title=f"{name}: projection difference on {trait} at layer {result.layer}",
                xaxis="projection difference",
            )
    for trait, comparison in result.comparison.items():
        for key in ("dp", "dp_last_prompt"):
            values = {n: result.scores(out, n, trait, key) for n in result.names}
            figures[result.comparison_file(trait, key)] = histogram_figure(
                values,
                nbins=bins,
                xaxis=f"{key} on {trait}",
                title=f"{key} on {trait} at layer {result.layer}: datasets compared",
            )
            figures[result.comparison_file(trait, key, controls=True)] = baseline_figure(
                {
                    f"{metric} {n}": Baseline.from_dict(b)
                    for n, by_metric in comparison[f"baselines_{key}"].items()
                    for metric, b in by_metric.items()
                },
                title=f"{key} on {trait}: datasets vs {comparison['reference']}, beside the controls",
                vector=trait,
            )
    return figures


def histogram_figure(
    series: Mapping[str, Sequence[float]], *, title: str, xaxis: str, nbins: int = 50, overlay: bool = True
) -> go.Figure:
    """Histograms of several series (one per dataset) on common bins, overlaid and semi-transparent, each with a
    dashed line at its mean. Counts are computed here (numpy), so the figure's size does not grow with the data.
    """
    arrays = {}
    for label, values in series.items():
        array = np.asarray(values, dtype=np.float64).ravel()
        arrays[label] = array[np.isfinite(array)]
    figure = go.Figure()
    combined = np.concatenate(list(arrays.values())) if arrays else np.zeros(0)
    if combined.size:
        edges = np.histogram_bin_edges(combined, bins=nbins)
        centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        for c, (label, values) in enumerate(arrays.items()):
            colour = _PALETTE[c % len(_PALETTE)]
            counts, _ = np.histogram(values, bins=edges)
            mean = float(values.mean()) if values.size else math.nan
            shown = "n/a" if math.isnan(mean) else f"{mean:.3g}"
            figure.add_trace(
                go.Bar(
                    x=centers,
                    y=counts,
                    width=widths,
                    name=f"{label} (n={values.size}, mean {shown})",
                    marker={"color": colour},
                    opacity=0.55 if overlay and len(arrays) > 1 else 0.9,
                )
            )
            if values.size:
                figure.add_vline(x=mean, line={"color": colour, "dash": "dash", "width": 2})
    figure.update_layout(
        title=title,
        xaxis_title=xaxis,
        yaxis_title="samples",
        template="plotly_white",
        barmode="overlay" if overlay else "group",
        bargap=0,
    )
    return figure
