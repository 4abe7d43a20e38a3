"""Shared fixtures: tiny random architectures (every test runs on each) and the real SmolLM2 model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import persona_lens  # noqa: E402
from persona_lens.core.models import SMOLLM2  # noqa: E402
from persona_lens.core.tiny import ARCHITECTURES  # noqa: E402

TINY = sorted(ARCHITECTURES)
_MODELS: dict[str, persona_lens.HookedLM] = {}


def load_cached(name: str) -> persona_lens.HookedLM:
    """Models are built once per session; tests must leave no hooks behind (checked after each test)."""
    if name not in _MODELS:
        _MODELS[name] = persona_lens.load_model(name, device="cpu")
    return _MODELS[name]


@pytest.fixture(params=TINY)
def tiny_model(request) -> persona_lens.HookedLM:
    return load_cached(request.param)


@pytest.fixture
def smollm2() -> persona_lens.HookedLM:
    return load_cached(SMOLLM2)


@pytest.fixture(params=[*TINY, pytest.param("smollm2-135m-instruct", marks=pytest.mark.slow)])
def any_model(request) -> persona_lens.HookedLM:
    """Each tiny architecture, plus the real SmolLM2 (marked slow)."""
    return load_cached(request.param)


@pytest.fixture(autouse=True)
def _no_leftover_hooks():
    torch.manual_seed(0)
    yield
    for name, model in _MODELS.items():
        leftover = [n for n, point in model.hook_dict.items() if point._forward_hooks]
        if leftover:
            model.reset_hooks(including_permanent=True)
            for point in model.hook_dict.values():
                point._forward_hooks.clear()
            pytest.fail(f"hooks left installed on {name}: {leftover}")


@pytest.fixture
def cli_env(server, monkeypatch, tmp_path):
    """A CLI run against the module's ``server`` fixture (a fake Anthropic API on 127.0.0.1): key and base URL set,
    ``$PERSONA_LENS_TRAITS`` and the working directory in ``tmp_path``."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("PERSONA_LENS_TRAITS", str(tmp_path / "traits"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_extract_args(*, max_new_tokens: int = 3) -> list[str]:
    """The smallest ``extract`` command line: pirate on tiny-llama, exact rule judges, one pair, one question."""
    return [
        "extract", "pirate", "--model", "tiny-llama", "--judge", "rule", "--coherence", "rule",
        "--samples", "1", "--questions", "1", "--pairs", "1", "--max-new-tokens", str(max_new_tokens), "--quiet",
    ]  # fmt: skip
