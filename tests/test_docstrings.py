"""The examples in the main public functions' docstrings run as doctests (on tiny models built in memory), so the
API reference cannot show code that does not work. Each module must hold examples: a module whose examples were
deleted fails here instead of passing with nothing run."""

import doctest
import importlib

import pytest

MODULES = [
    "persona_lens.core.hooks",  # steer, ablate, cap, record
    "persona_lens.core.models",  # load_model
    "persona_lens.core.generation",  # generate
    "persona_lens.core.activations",  # contrast_vector
    "persona_lens.core.controls",  # random_like
    "persona_lens.judges.base",  # check_items
    "persona_lens.traits.schema",  # load_trait
    "persona_lens.experiments.extract",  # extract
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
