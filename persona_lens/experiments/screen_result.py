"""The result of ``screen`` over one or more datasets, and the folder it owns.

:func:`screen_datasets` screens each dataset into its resumable ``<name>.scores.jsonl`` (:func:`screen_dataset`
writes and resumes those records) and, with several datasets, compares each with the first (AUROC and mean
difference beside their controls). :meth:`ScreenResult.save` writes the report files of the folder: the ranked
samples per trait (``<name>.ranked.<trait>.jsonl`` and ``.csv``) and ``screen_report.json``;
:meth:`ScreenResult.load` reads the report back. The figures (histograms per dataset and trait, comparisons) are
drawn from a fresh or loaded result and the scores files of its folder by
:func:`persona_lens.viz.projections.screen_figures`, without the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import write_json_atomic
from persona_lens.core.results import ResultFileError, read_json, slug
from persona_lens.core.stats import auroc
from persona_lens.core.vectors import VectorLike
from persona_lens.experiments.screen import ScreenConfig, compare_datasets, export_ranked, load_scores, screen_dataset

__all__ = ["ScreenResult", "screen_datasets", "COMPARED_KEYS", "SCREEN_REPORT"]

COMPARED_KEYS = ("dp", "dp_last_prompt")
"""The scores datasets are compared on (and histogrammed)."""
SCREEN_REPORT = "screen_report.json"


@dataclass
class ScreenResult:
    """Each dataset's summary (:func:`~persona_lens.experiments.screen.summarize` of its scores file, with
    ``data``: the dataset's path, and ``files``: the files of the folder for it) and, per trait, the comparison of
    each dataset with the first (``auroc_<key>``, ``baselines_<key>``, ``<key>_figure``)."""

    model: str
    layer: int
    datasets: dict[str, dict[str, Any]]
    comparison: dict[str, dict[str, Any]]
    rank_by: str = "dp"
    top: int | None = None

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    @property
    def traits(self) -> list[str]:
        traits: list[str] = []
        for summary in self.datasets.values():
            traits = summary["traits"] or traits
        return traits

    @staticmethod
    def scores_file(name: str) -> str:
        return f"{name}.scores.jsonl"

    @staticmethod
    def ranked_files(name: str, trait: str) -> list[str]:
        return [f"{name}.ranked.{slug(trait)}{suffix}" for suffix in (".jsonl", ".csv")]

    @staticmethod
    def histogram_file(name: str, trait: str) -> str:
        return f"{name}.hist.{slug(trait)}.html"

    @staticmethod
    def comparison_file(trait: str, key: str, controls: bool = False) -> str:
        return f"comparison.{slug(trait)}.{key}{'.controls' if controls else ''}.html"

    def scores(
        self, folder: str | os.PathLike[str], name: str, trait: str, key: str = "dp"
    ) -> Float[np.ndarray, " n_scored"]:
        """The ``key`` scores on ``trait`` of dataset ``name``'s scored samples, read from its scores file in
        ``folder``."""
        return load_scores(Path(folder) / self.scores_file(name), trait, key)[1]

    def to_json(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """The report, with the files of ``folder`` it lists (a figure's ``.png`` when one is beside it)."""
        out = Path(folder)
        datasets = {}
        for name, summary in self.datasets.items():
            files = [out / self.scores_file(name)]
            for trait in summary["traits"]:
                files += [out / f for f in self.ranked_files(name, trait)]
                files += _figure_files(out / self.histogram_file(name, trait))
            datasets[name] = {**summary, "files": [str(p) for p in files]}
        comparison = {}
        for trait, compared in self.comparison.items():
            comparison[trait] = dict(compared)
            for key in COMPARED_KEYS:
                comparison[trait][f"{key}_figure"] = [
                    str(p)
                    for controls in (False, True)
                    for p in _figure_files(out / self.comparison_file(trait, key, controls))
                ]
        return {
            "model": self.model,
            "layer": self.layer,
            "datasets": datasets,
            "comparison": comparison,
            "rank_by": self.rank_by,
            "top": self.top,
        }

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the ranked samples of each dataset and trait and ``screen_report.json`` into ``folder`` (which holds
        the scores files); the paths written."""
        out = Path(folder)
        written = []
        for name, summary in self.datasets.items():
            if summary["traits"] and not Path(summary.get("data") or "").is_file():
                raise ResultFileError(
                    f"the ranked samples of {name!r} are re-exported from its dataset, and "
                    f"{summary.get('data') or 'a report written before it was recorded'} is not a "
                    "file: rerun the screen from the folder it was run in"
                )
            for trait in summary["traits"]:
                written += [
                    export_ranked(
                        out / self.scores_file(name), summary["data"], out / file, trait, key=self.rank_by, top=self.top
                    )
                    for file in self.ranked_files(name, trait)
                ]
        return [*written, write_json_atomic(out / SCREEN_REPORT, self.to_json(out))]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ScreenResult:
        """The result back from the ``screen_report.json`` of a folder written by :meth:`save` (a report written
        before it held ``rank_by``/``top``/``data`` loads with the defaults and cannot re-export the ranking)."""
        data = read_json(Path(folder) / SCREEN_REPORT, SCREEN_REPORT)
        datasets = {
            name: {k: v for k, v in summary.items() if k != "files"} for name, summary in data["datasets"].items()
        }
        comparison = {
            trait: {k: v for k, v in compared.items() if not k.endswith("_figure")}
            for trait, compared in data.get("comparison", {}).items()
        }
        return cls(data["model"], int(data["layer"]), datasets, comparison, data.get("rank_by", "dp"), data.get("top"))


def _figure_files(html: Path) -> list[Path]:
    png = html.with_suffix(".png")
    return [html, png] if png.exists() else [html]


def screen_datasets(
    model: HookedLM,
    data: Mapping[str, str | os.PathLike[str]],
    vectors: VectorLike | Sequence[VectorLike],
    folder: str | os.PathLike[str],
    config: ScreenConfig,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    rank_by: str = "dp",
    top: int | None = None,
    allow_other_model: bool = False,
    progress: bool = True,
    executor: Any = None,
) -> ScreenResult:
    """Screen each dataset of ``data`` (name -> chat JSONL file) into ``folder/<name>.scores.jsonl`` (resuming what
    is there) and compare each with the first. Writes only the scores files; :meth:`ScreenResult.save` the rest."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, dict[str, Any]] = {}
    for name, path in data.items():
        summary = screen_dataset(
            model,
            path,
            vectors,
            out / ScreenResult.scores_file(name),
            config,
            cache_path=cache_path,
            limit=limit,
            allow_other_model=allow_other_model,
            progress=progress,
            executor=executor,
        )
        datasets[name] = {**summary, "data": str(path)}
    result = ScreenResult(model.cfg.model_name, config.layer, datasets, {}, rank_by, top)
    if len(datasets) > 1:
        result.comparison = {trait: compare_screened(out, result.names, trait) for trait in result.traits}
    return result


def compare_screened(folder: str | os.PathLike[str], names: Sequence[str], trait: str) -> dict[str, Any]:
    """Each dataset's scores in ``folder`` against the first's, on ``trait``: AUROC per key and its controls."""
    out = Path(folder)
    files = {n: out / ScreenResult.scores_file(n) for n in names}
    comparison: dict[str, Any] = {"reference": names[0]}
    for key in COMPARED_KEYS:
        values = {n: load_scores(files[n], trait, key)[1] for n in names}
        reference = values[names[0]]
        comparison[f"auroc_{key}"] = {
            n: _none_if_nan(auroc([*values[n], *reference], [1] * len(values[n]) + [0] * len(reference)))
            for n in names[1:]
        }
        compared = compare_datasets(files, trait, key)
        comparison[f"baselines_{key}"] = {n: c.to_json()["baselines"] for n, c in compared.items()}
    return comparison


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
