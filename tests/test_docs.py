"""The documentation's checkable promises: the notebooks shown on the site are the notebooks in notebooks/ (same
code cells, so a rendered copy cannot go stale), every page is in the site's navigation, and the quick test loop
leaves the notebooks out (they run in the full suite)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("source", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_the_site_shows_each_notebook_with_its_current_code(source):
    shown = ROOT / "docs" / "notebooks" / source.name
    assert shown.exists(), f"{shown} is missing: run scripts/render_notebooks.py {source.stem}"
    assert _code_cells(shown) == _code_cells(source), (
        f"{shown} is stale: re-render it with `python scripts/render_notebooks.py {source.stem}`"
    )


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    linked = set(re.findall(r":\s*(\S+\.(?:md|ipynb))\s*$", nav, flags=re.M))
    docs = ROOT / "docs"
    pages = {
        (Path(folder) / name).relative_to(docs).as_posix()  # docs/results links to benchmarks/results
        for folder, _, names in os.walk(docs, followlinks=True)
        for name in names
        if name.endswith((".md", ".ipynb"))
    }
    assert pages - linked == set(), "pages missing from mkdocs.yml's nav"
    assert linked - pages == set(), "nav entries without a page"


def test_the_quick_loop_leaves_the_notebooks_out():
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            "notebooks",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "3 deselected" in process.stdout or "deselected" in process.stdout, process.stdout[-2000:]
    assert ".ipynb::" not in process.stdout, process.stdout[-2000:]
