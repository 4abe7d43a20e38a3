"""One vLLM engine for the whole session (engine start is minutes on a CPU), on the SmolLM2 the main suite loads.

These tests run in the vLLM environment only (``bash scripts/setup_vllm.sh``, pytest marker ``vllm``); the main
suite deselects them (pyproject ``addopts = -m "not vllm"``). Without vLLM installed they fail, naming the setup.
"""

from __future__ import annotations

import pytest

from tests.conftest import load_cached

_ENGINE: list = []


@pytest.fixture(scope="session")
def engine():
    from persona_lens.core.vllm_engine import VLLMEngine

    if not _ENGINE:
        model = load_cached("smollm2-135m-instruct")
        _ENGINE.append(VLLMEngine(model, max_num_seqs=64, max_model_len=2048))
    yield _ENGINE[0]


@pytest.fixture
def model(engine):
    return engine.model
