"""Without vLLM installed (the main environment), the vLLM engine refuses loudly, naming the setup script.

The engine itself is tested against the in-process model in its own environment (tests/vllm, marker ``vllm``).
"""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from persona_lens.cli import BadInput
from persona_lens.cli.scale import executor_from_args
from persona_lens.core.vllm_engine import EngineUnavailable, VLLMEngine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here: tests/vllm test the engine itself"
)


def test_the_engine_names_the_setup_when_vllm_is_missing(tiny_model):
    with pytest.raises(EngineUnavailable, match="scripts/setup_vllm.sh"):
        VLLMEngine(tiny_model)


def test_engine_vllm_on_the_command_line_is_a_bad_input_naming_the_setup():
    args = argparse.Namespace(engine="vllm", ray=None, engine_model=None, engine_concurrency=8)
    with pytest.raises(BadInput, match="scripts/setup_vllm.sh"):
        executor_from_args(args)


def test_engine_vllm_is_refused_when_parsed_before_the_run_starts(capsys):
    """It was refused at the first generate call, after the sweep had begun extracting its vector (5-8 s later)."""
    from persona_lens.cli import main

    assert main(["sweep", "--model", "/nonexistent/model-folder", "--trait", "pirate", "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "argument --engine" in err and "scripts/setup_vllm.sh" in err and "model-folder" not in err
