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
        import torch

        # one thread in-process, as vLLM's CPU worker: on a shared 2-core machine two OpenMP threads spin-wait
        # each other (measured: 4 replies x 32 tokens in 103 s at load average 20)
        torch.set_num_threads(1)
        model = load_cached("smollm2-135m-instruct")
        _ENGINE.append(VLLMEngine(model, max_num_seqs=64, max_model_len=2048))
    yield _ENGINE[0]


@pytest.fixture
def model(engine):
    return engine.model


def _vllm_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is None


def pytest_collection_modifyitems(config, items):
    """Where vLLM is not installed, deselect these tests visibly (they run in .venv-vllm, scripts/setup_vllm.sh)."""
    if not _vllm_missing():
        return
    ours = [item for item in items if "vllm" in item.keywords and "tests/vllm/" in str(item.path).replace("\\", "/")]
    if not ours:
        return
    items[:] = [item for item in items if item not in ours]
    config.hook.pytest_deselected(items=ours)
    config._vllm_deselected = len(ours)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    count = getattr(config, "_vllm_deselected", 0)
    if count:
        terminalreporter.write_line(
            f"{count} vLLM tests deselected: vllm is not installed in this environment; "
            "bash scripts/setup_vllm.sh runs them in .venv-vllm"
        )
