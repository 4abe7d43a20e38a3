"""``--engine vllm+URL`` on a server that does not run persona_lens's worker extension is refused before any reply,
naming the command that starts a server that does (vLLM ignores extra arguments nobody reads, so a steered request
there would come back unsteered). The server is a real local OpenAI-compatible one (tests/fake_engine.py) that
serves chat completions and nothing else, as a plain ``vllm serve`` without dev mode does. No vLLM needed."""

from __future__ import annotations

import pytest

from persona_lens import cli
from persona_lens.core.vllm_engine import EngineUnavailable
from persona_lens.core.vllm_server import VLLMServer, serve_command
from tests.conftest import load_cached, tiny_extract_args
from tests.fake_engine import FakeEngine


def test_a_server_without_the_extension_is_refused_with_the_serve_command():
    model = load_cached("tiny-llama")
    with FakeEngine(model.tokenizer) as server:
        engine = VLLMServer("vllm+" + server.url, timeout=10)
        with pytest.raises(EngineUnavailable) as raised:
            engine.check_matches(model)
        chats = server.counts["chat"]
    message = str(raised.value)
    assert "--worker-extension-cls persona_lens.core.vllm_worker.PersonaLensWorker" in message
    assert "VLLM_SERVER_DEV_MODE=1 VLLM_USE_V2_MODEL_RUNNER=0 vllm serve served-model" in message
    assert server.url in message
    assert chats == 1 + 2  # the tokenizer probe, then the hook install tried twice; no reply was asked for
    assert not engine.info  # not started: a later call tries again, it does not steer without the hooks


def test_cli_refuses_such_a_server_in_one_sentence_and_keeps_no_reply(tmp_path, capsys):
    model = load_cached("tiny-llama")
    with FakeEngine(model.tokenizer) as server:
        argv = [*tiny_extract_args(), "--out", str(tmp_path / "run"), "--engine", "vllm+" + server.url]
        assert cli.main([*argv, "--engine-timeout", "10"]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm+" in err and "on the engine" in err  # what would have run where
    # (the fake server's own handler prints a traceback for the request it cannot parse: not ours)
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: the server at") and "--worker-extension-cls" in line
    assert not (tmp_path / "run" / "responses.jsonl").exists()


def test_the_serve_command_names_the_extension_and_the_settings_the_hooks_need():
    command = serve_command("M", 8000)
    for part in (
        "VLLM_SERVER_DEV_MODE=1",
        "vllm serve M --port 8000",
        "--worker-extension-cls persona_lens.core.vllm_worker.PersonaLensWorker",
        "--enforce-eager",
        "--no-enable-prefix-caching",
    ):
        assert part in command
    assert serve_command("M", 1, python="/v/bin/python").startswith(
        "VLLM_SERVER_DEV_MODE=1 VLLM_USE_V2_MODEL_RUNNER=0 /v/bin/python -m vllm.entrypoints.openai.api_server --model M "
    )
