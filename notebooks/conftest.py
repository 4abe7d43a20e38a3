"""The notebooks run under nbmake as slow tests: two of them load SmolLM2, so ``pytest -m "not slow"`` (the quick
loop) leaves all three out, and the full run (``pytest -q``, CI) still executes every cell."""

import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
