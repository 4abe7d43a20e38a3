"""Execute the notebooks once and store the executed copies (with their figures) for the documentation site.

    .venv/bin/python scripts/render_notebooks.py [NAME ...]      # default: every notebook in notebooks/

The site (mkdocs.yml, mkdocs-jupyter) renders ``docs/notebooks/*.ipynb`` without executing them, so the docs build
never loads SmolLM2; these copies carry the outputs (stderr, i.e. progress bars and warnings, is dropped). A
notebook not rendered yet is a symbolic link to its source (the site then shows its code without outputs).
``tests/test_docs.py`` checks that every copy's code cells equal its source's, so a copy is re-rendered whenever a
notebook changes. Needs the ``dev`` extra (nbconvert, ipykernel).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "notebooks", ROOT / "docs" / "notebooks"


def drop_stderr(notebook: dict) -> dict:
    """The notebook without its stderr outputs (progress bars, library warnings): the site shows results."""
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if o.get("name") != "stderr"]
    return notebook


def render(name: str, timeout: int) -> float:
    """Execute ``notebooks/NAME.ipynb`` in ``notebooks/`` and write it to ``docs/notebooks/NAME.ipynb``."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    source = SOURCE / f"{name}.ipynb"
    notebook = nbformat.read(source, as_version=4)
    started = time.perf_counter()
    executor = ExecutePreprocessor(timeout=timeout, kernel_name="python3")
    executor.preprocess(notebook, {"metadata": {"path": str(SOURCE)}})
    target = TARGET / f"{name}.ipynb"
    if target.is_symlink():
        target.unlink()
    nbformat.write(drop_stderr(notebook), target)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in SOURCE.glob("*.ipynb"))
    missing = [n for n in names if not (SOURCE / f"{n}.ipynb").is_file()]
    if missing:
        print(f"no notebook {', '.join(missing)} in {SOURCE}; use one of "
              f"{', '.join(sorted(p.stem for p in SOURCE.glob('*.ipynb')))}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {render(name, args.timeout):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
