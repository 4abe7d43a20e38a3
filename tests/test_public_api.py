"""One curated public API: user examples (the README quickstart, the notebooks) import only from ``persona_lens``
or a subpackage's ``__init__``, every exported name resolves, and the packages stay lazy."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import persona_lens
from benchmarks.quickstart import readme_quickstart

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    [
        "persona_lens",
        *(f"persona_lens.{info.name}" for info in pkgutil.iter_modules(persona_lens.__path__) if info.ispkg),
    ]
)
# every package at any depth (e.g. persona_lens.experiments.space): a package's ``__init__`` is public API too
ALL_PACKAGES = sorted(
    [
        "persona_lens",
        *(info.name for info in pkgutil.walk_packages(persona_lens.__path__, "persona_lens.") if info.ispkg),
    ]
)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DOC_PAGES = sorted([*(ROOT / "docs").glob("*.md"), *(ROOT / "docs" / "guides").glob("*.md")])


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    return "\n".join(line for block in code for line in block.splitlines() if not line.lstrip().startswith(("%", "!")))


def _deep_imports(code: str) -> list[str]:
    """Each persona_lens import of ``code`` that reaches past the public API: a module that is not a package, or
    a name that is not in the package's ``__all__``."""
    wrong = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            wrong += [
                alias.name
                for alias in node.names
                if alias.name.startswith("persona_lens") and alias.name not in ALL_PACKAGES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("persona_lens"):
            if node.module not in ALL_PACKAGES:
                wrong.append(node.module)
                continue
            public = importlib.import_module(node.module).__all__
            wrong += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if alias.name not in public and f"{node.module}.{alias.name}" not in ALL_PACKAGES
            ]
    return wrong


def test_the_readme_quickstart_imports_only_the_public_api():
    assert _deep_imports(readme_quickstart()) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_each_notebook_imports_only_the_public_api(notebook):
    assert _deep_imports(_notebook_code(notebook)) == []


def _python_blocks(markdown: str) -> list[str]:
    """The fenced ```python blocks of a Markdown page (a block of ``>>>`` lines: those lines, without the prompts)."""
    blocks = [part.split("```", 1)[0] for part in markdown.split("```python\n")[1:]]
    return [
        "\n".join(line[4:] for line in block.splitlines() if line.startswith((">>> ", "... ")))
        if ">>> " in block
        else block
        for block in blocks
    ]


def test_the_docs_find_their_python_blocks():
    page = "text\n```python\nimport persona_lens as pl\n```\nmore\n```python\n>>> from persona_lens.core.io import x\n```\n"
    assert _python_blocks(page) == ["import persona_lens as pl\n", "from persona_lens.core.io import x"]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda path: path.name)
def test_each_docs_page_imports_only_the_public_api(page):
    wrong = []
    for block in _python_blocks(page.read_text(encoding="utf-8")):
        try:
            wrong += _deep_imports(block)
        except SyntaxError:  # a sketch with "..." in it: its import lines alone
            imports = [
                line for line in block.splitlines() if line.startswith(("import persona_lens", "from persona_lens"))
            ]
            assert imports or "persona_lens." not in block, f"{page.name}: cannot read the block's imports:\n{block}"
            wrong += _deep_imports("\n".join(imports))
    assert wrong == []


def test_the_check_finds_a_deep_import():
    code = (
        "from persona_lens.core.controls import random_like\nimport persona_lens.core.stats\n"
        "from persona_lens.core import token_layout\nfrom persona_lens import random_like\n"
    )
    assert _deep_imports(code) == [
        "persona_lens.core.controls",
        "persona_lens.core.stats",
        "persona_lens.core.token_layout",
    ]


def test_the_root_holds_what_a_user_example_needs():
    needed = {
        "load_model",
        "load_trait",
        "extract",
        "ExtractConfig",
        "RuleJudge",
        "random_like",
        "steer",
        "cap",
        "ablate",
        "record",
        "generate",
        "run_steering_sweep",
        "build_space",
        "apply_cap",
        "Error",
        "finetune",
        "shift_study",
        "screen_dataset",
        "generate_with_projections",
    }
    assert needed <= set(persona_lens.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves_and_none_is_a_submodule(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "a name exported twice"
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not submodules & set(module.__all__), "a submodule name hides the function of the same name"
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_name"):
        persona_lens.no_such_name  # noqa: B018


def test_the_version_is_written_once_beside_pyproject():
    import re

    from persona_lens.core.version import __version__

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib is 3.11+; the package runs on 3.10
    assert persona_lens.__version__ == __version__ == re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)


def test_no_module_of_the_package_imports_the_root_package():
    """The root re-exports from below; an import of ``persona_lens`` itself from inside would run back up."""
    upward = []
    for path in sorted((ROOT / "persona_lens").rglob("*.py")):
        if path == ROOT / "persona_lens" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(alias.name == "persona_lens" for alias in node.names):
                upward.append(str(path.relative_to(ROOT)))
            elif isinstance(node, ast.ImportFrom) and node.module == "persona_lens" and node.level == 0:
                upward.append(str(path.relative_to(ROOT)))
    assert upward == []
