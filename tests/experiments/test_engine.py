"""A real OpenAI-compatible server (`transformers serve`, started by scripts/serve_transformers.sh) as the engine of
the unsteered replies: exact tokens, the same extraction, a loud error for another model."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import persona_lens.experiments.extract as X
from persona_lens.core.chat import make_messages
from persona_lens.core.engine import EngineError, EngineMismatch, OpenAIEngine
from persona_lens.core.generation import generate
from persona_lens.core.vectors import cosine_similarity_by_layer
from persona_lens.experiments.executor import EngineExecutor
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import load_cached

pytest.importorskip("fastapi", reason="the engine tests serve with `transformers serve` (persona_lens[engine])")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [make_messages(q, system="You are a pirate.") for q in ["Name a colour.", "What is 2+2?", "Tell me a joke."]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The script's server on a free port (PERSONA_LENS_TEST_ENGINE: reuse one the script started already)."""
    if os.environ.get("PERSONA_LENS_TEST_ENGINE"):
        yield os.environ["PERSONA_LENS_TEST_ENGINE"]
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pidfile = tmp_path_factory.mktemp("serve") / "serve.pid"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SERVE_PIDFILE": str(pidfile),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "serve_transformers.sh"), "smollm2-135m-instruct", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip()
    os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_engine_replies_and_tokens_equal_in_process_greedy(server, smollm2):
    engine = OpenAIEngine(server, concurrency=3)
    served = engine.generate(smollm2, PROMPTS, max_new_tokens=12)
    local = generate(smollm2, PROMPTS, max_new_tokens=12)
    print("engine:", served.texts)
    assert served.texts == local.texts
    assert served.response_ids == local.response_ids and served.prompt_ids == local.prompt_ids
    assert served.stopped == local.stopped


def test_extraction_on_the_engine_gives_the_in_process_vector(server, smollm2, tmp_path):
    config = X.ExtractConfig(n_samples=1, n_questions=3, n_pairs=2, max_new_tokens=24, batch_size=12, temperature=0.0)
    results = {
        label: X.extract(
            smollm2,
            load_trait("pirate"),
            judge=RuleJudge("pirate"),
            coherence_judge=RuleJudge("coherence"),
            config=config,
            out_dir=tmp_path / label,
            progress=False,
            executor=executor,
        )
        for label, executor in (("engine", EngineExecutor(OpenAIEngine(server, concurrency=4))), ("local", None))
    }
    engine, local = results["engine"], results["local"]
    same = sum(engine.records[k]["response_ids"] == local.records[k]["response_ids"] for k in local.records)
    cosine = cosine_similarity_by_layer(engine.vectors["response"], local.vectors["response"])
    print(f"identical replies {same}/{len(local.records)}; cosine per layer {[round(float(c), 4) for c in cosine]}")
    assert same == len(local.records)  # measured: 12/12 greedy replies identical, cosine 1.0000 at every layer
    torch.testing.assert_close(engine.vectors["response"].vectors, local.vectors["response"].vectors)


def test_another_served_model_is_refused_with_the_fix(server):
    with pytest.raises(EngineMismatch, match="another model, tokenizer or chat template"):
        OpenAIEngine(server).check_matches(load_cached("tiny-qwen2"))
    with pytest.raises(EngineMismatch, match="does not serve"):
        OpenAIEngine(server, model="some/other-model").check_matches(load_cached("tiny-qwen2"))


def test_an_unreachable_engine_names_the_fix():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EngineError, match="serve_transformers.sh"):
        OpenAIEngine(f"http://127.0.0.1:{port}", timeout=5).served_models()


def test_cli_extract_with_engine_and_its_errors(server, tmp_path, capsys):
    from persona_lens import cli

    common = [
        "extract",
        "pirate",
        "--model",
        "smollm2-135m-instruct",
        "--device",
        "cpu",
        "--judge",
        "rule",
        "--coherence",
        "rule",
        "--samples",
        "1",
        "--questions",
        "2",
        "--pairs",
        "2",
        "--max-new-tokens",
        "16",
        "--temperature",
        "0",
        "--quiet",
        "--trait-threshold",
        "50",
        "--judge-cache",
        str(tmp_path / "judge.sqlite"),
    ]
    code = cli.main([*common, "--out", str(tmp_path / "engine"), "--engine", server])
    print(capsys.readouterr().out)
    assert code == 0 and (tmp_path / "engine" / "report.json").exists()
    assert cli.main([*common, "--out", str(tmp_path / "both"), "--engine", server, "--ray"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main([*common, "--model", "tiny-qwen2", "--out", str(tmp_path / "other"), "--engine", server]) == 2
    assert "another model" in capsys.readouterr().err


def test_screening_base_replies_from_the_engine_equal_in_process(server, smollm2, tmp_path):
    import json

    from persona_lens.core.vectors import PersonaVector
    from persona_lens.experiments.screen import ScreenConfig, screen_dataset

    data = tmp_path / "d.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for messages, answer in zip(PROMPTS, ["Red, matey!", "Four.", "Why did the parrot cross the sea?"]):
            handle.write(json.dumps({"messages": [*messages, {"role": "assistant", "content": answer}]}) + "\n")
    vector = PersonaVector(
        "pirate",
        smollm2.cfg.model_name,
        torch.randn(smollm2.cfg.n_layers + 1, smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0)),
    )
    config = ScreenConfig(layer=10, max_new_tokens=12, chunk_size=2, batch_size=2)
    screen_dataset(smollm2, data, [vector], tmp_path / "local.jsonl", config, progress=False)
    report = screen_dataset(
        smollm2,
        data,
        [vector],
        tmp_path / "engine.jsonl",
        config,
        progress=False,
        executor=EngineExecutor(OpenAIEngine(server)),
    )
    assert report["base_responses_generated"] == 3
    local = [json.loads(line) for line in open(tmp_path / "local.jsonl")]
    served = [json.loads(line) for line in open(tmp_path / "engine.jsonl")]
    assert [r["base_response"] for r in served] == [r["base_response"] for r in local]
    for a, b in zip(served, local):
        assert a["dp"]["pirate"] == pytest.approx(b["dp"]["pirate"], abs=1e-4)
