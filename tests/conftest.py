"""Shared fixtures: tiny random architectures (every test runs on each) and the real SmolLM2 model."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings

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


def _is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


@contextlib.contextmanager
def _one_thread():
    """torch on one intra-op thread, and the CLI subprocesses a test starts too ($OMP_NUM_THREADS, read when a child
    imports torch); both restored after."""
    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if variable is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = variable


@pytest.fixture(scope="session", autouse=True)
def _one_thread_in_the_quick_loop(request):
    """A run with no slow test (the quick loop, ``-m "not slow"``) runs torch on one intra-op thread throughout.

    The tiny models gain nothing from a second thread, and on a shared machine two threads per process spin against
    the other jobs: on the shared 2-core machine the quick loop took 364 s of CPU for its first ~40% with torch's
    default 2 threads, 110 s of CPU for all of it with one (benchmarks/results/tests.md). A run with slow tests keeps
    torch's default for them (SmolLM2 uses both cores of an idle machine); the fast tests of such a run get one
    thread each (``_one_thread_for_fast_tests``)."""
    if any(_is_slow(item) for item in request.session.items):
        yield
        return
    with _one_thread():
        yield


@pytest.fixture(autouse=True)
def _one_thread_for_fast_tests(request):
    """Each test that is not slow runs on one intra-op thread, also in a run mixed with slow tests."""
    if _is_slow(request.node):
        yield
        return
    with _one_thread():
        yield


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


@pytest.fixture(autouse=True)
def _no_leftover_signal_handlers(request):
    """A test that leaves SIGINT or SIGTERM handled differently than it found them (an ignored Ctrl-C is inherited by
    every subprocess the later tests start) gets them restored and a warning naming it."""
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in before.items():
        after = signal.getsignal(number)
        if after is not handler:
            signal.signal(number, handler)
            warnings.warn(
                f"{request.node.nodeid} left {signal.Signals(number).name} as {after!r}; restored", stacklevel=1
            )


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
