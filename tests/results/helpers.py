"""Shared checks of a result folder: what ``save`` writes is what ``load`` reads back, and the figures drawn from
the loaded result are the figures drawn from the fresh one (compared as Plotly JSON), with no model in reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure_json(figures: dict[Any, Any]) -> dict[str, str]:
    return {str(key): figure.to_json() for key, figure in figures.items()}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
