"""Issue 27 items 2-3 and issue 25's "engines that misbehave": a real local HTTP server (tests/fake_engine.py) for
each fault. A transient fault (500, 429, dropped connection) is retried to the right replies; a reply we cannot
trust (null or empty content, more tokens than asked, another model's name or token count, a body that is not
JSON) is one sentence naming the server and nothing of its call is kept; a hang ends within the timeout with
progress, and Ctrl-C exits 130 within a second; a resumed run redoes only the unfinished units."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_lens.cli import main
from persona_lens.core.chat import make_messages
from persona_lens.core.engine import EngineError, EngineMismatch, OpenAIEngine
from persona_lens.core.io import JsonlRecords
from persona_lens.experiments.evaluate import GenerationSettings, ReplyJob, generate_replies
from persona_lens.experiments.executor import EngineExecutor
from tests.conftest import load_cached, tiny_extract_args
from tests.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ["Name a colour.", "What is 2+2?", "Tell me a joke.", "Where is the sea?", "Say hello.", "Pick a fish."]
SETTINGS = GenerationSettings(max_new_tokens=48, temperature=0.0, batch_size=2)


def engine(url: str, **options) -> OpenAIEngine:
    """The client with the options this version of it has (so the same test runs against older code)."""
    accepted = inspect.signature(OpenAIEngine).parameters
    return OpenAIEngine(url, **{k: v for k, v in options.items() if k in accepted})


def jobs(n: int = 2) -> list[ReplyJob]:
    return [
        ReplyJob(f"q{i}", make_messages(q, system="You are a pirate."), seed=i, fields={"question_text": q})
        for i, q in enumerate(QUESTIONS[:n])
    ]


def run(url: str, store: Path, n: int = 2, **options) -> dict:
    model = load_cached("tiny-llama")
    return generate_replies(
        model,
        jobs(n),
        SETTINGS,
        store=JsonlRecords(store),
        chunk=2,
        executor=EngineExecutor(engine(url, backoff=0.01, progress_every=None, **options)),
    )


@pytest.mark.parametrize("fault", ["500", "429", "drop"])
def test_transient_faults_are_retried_to_the_right_replies(tmp_path, fault):
    with FakeEngine(load_cached("tiny-llama").tokenizer, faults=[fault, fault]) as server:
        records = run(server.url, tmp_path / "r.jsonl")
    assert [r["response"] for r in records.values()] == [server.reply] * 2
    assert server.counts["chat"] == 1 + 2 + 2  # the probe, two faults, two replies


def test_transient_faults_beyond_the_retries_are_one_sentence_naming_the_server(tmp_path):
    with FakeEngine(load_cached("tiny-llama").tokenizer, always="500") as server:
        with pytest.raises(EngineError) as error:
            run(server.url, tmp_path / "r.jsonl", retries=2)
    assert server.url in str(error.value) and "HTTP 500" in str(error.value) and "3 tries" in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("null", EngineError, "empty reply (content None"),
        ("empty", EngineError, "empty reply (content ''"),
        ("overlong", EngineError, "a reply of 2000 tokens to a request for at most 48"),
        ("other-name", EngineMismatch, "answered as model 'some-other-model'"),
        ("malformed", EngineError, "are not JSON"),
        ("bad-count", EngineMismatch, "prompt tokens"),
    ],
)
def test_replies_we_cannot_trust_are_one_sentence_and_nothing_is_kept(tmp_path, fault, error, message):
    """Old main kept 'null'/'empty' as stopped empty replies and the 2,000-token reply, took any model name, and
    gave a raw JSONDecodeError for a malformed body."""
    with FakeEngine(load_cached("tiny-llama").tokenizer, faults=[fault]) as server:
        with pytest.raises(error) as raised:
            run(server.url, tmp_path / "r.jsonl")
    assert message in str(raised.value) and server.url in str(raised.value)
    assert not (tmp_path / "r.jsonl").exists() or JsonlRecords(tmp_path / "r.jsonl").load() == {}


def test_an_empty_reply_the_server_says_the_model_ended_at_once_is_kept(tmp_path):
    """An end-of-turn as the first token is the model's own empty reply (in-process generate keeps it too): kept as
    a stopped reply with no tokens; any other empty content is an error (above)."""
    with FakeEngine(load_cached("tiny-llama").tokenizer, faults=["empty-stop"]) as server:
        # one request at a time: the server's first answer carries the fault, so it must be q0's
        records = run(server.url, tmp_path / "r.jsonl", concurrency=1)
    assert records["q0"]["response"] == "" and records["q0"]["response_ids"] == [] and records["q0"]["stopped"]
    assert records["q1"]["response"] == server.reply


def test_another_name_is_accepted_when_asked_and_the_served_name_is_recorded(tmp_path):
    with FakeEngine(load_cached("tiny-llama").tokenizer, faults=["other-name"]) as server:
        records = run(server.url, tmp_path / "r.jsonl", allow_other_name=True)
        assert len(records) == 2
        assert engine(server.url).settings() == {"engine_model": "served-model"}


def test_a_hang_ends_within_the_timeout_naming_the_server_with_progress(tmp_path, capsys):
    with FakeEngine(load_cached("tiny-llama").tokenizer, always="hang") as server:
        client = engine(server.url, timeout=1.5, progress_every=0.5)
        started = time.monotonic()
        with pytest.raises(EngineError, match="no complete answer within 1.5 s") as error:
            generate_replies(
                load_cached("tiny-llama"),
                jobs(),
                SETTINGS,
                store=JsonlRecords(tmp_path / "r.jsonl"),
                executor=EngineExecutor(client),
            )
        took = time.monotonic() - started
    assert took < 4, took
    assert server.url in str(error.value) and "--engine-timeout" in str(error.value)
    assert "waiting for the engine at" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_a_resumed_run_redoes_only_the_unfinished_units(tmp_path):
    """Three units of two replies; the server fails for good after the first unit; a rerun asks only for four."""
    store = tmp_path / "r.jsonl"
    tokenizer = load_cached("tiny-llama").tokenizer
    with FakeEngine(tokenizer, healthy_first=3, always="500") as server, pytest.raises(EngineError):
        run(server.url, store, n=6, retries=0)
    first = JsonlRecords(store).load()
    assert sorted(first) == ["q0", "q1"]
    with FakeEngine(tokenizer) as server:
        records = run(server.url, store, n=6)
    assert server.counts["chat"] == 1 + 4 and len(records) == 6
    assert {k: records[k] for k in first} == first


def _cli(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [
        *tiny_extract_args(max_new_tokens=48),
        "--out",
        str(tmp_path / "run"),
        "--judge-cache",
        str(tmp_path / "judge.sqlite"),
        "--engine",
        url,
        *extra,
    ]


def test_cli_engine_faults_are_exit_2_and_one_sentence(tmp_path, capsys):
    tokenizer = load_cached("tiny-llama").tokenizer
    with FakeEngine(tokenizer, always="malformed") as server:
        code = main(_cli(tmp_path, server.url))
    err = capsys.readouterr().err
    assert code == 2 and server.url in err and "Traceback" not in err and "Expecting value" not in err
    assert main(_cli(tmp_path, "http://127.0.0.1:9", "--engine-timeout", "nan")) == 2
    assert "--engine-timeout must be a finite number" in capsys.readouterr().err


def test_cli_records_the_served_model_in_the_settings(tmp_path, capsys):
    with FakeEngine(load_cached("tiny-llama").tokenizer) as server:
        main(_cli(tmp_path, server.url))  # the rule judges may keep no pair (exit 2): the settings come first
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings.get("engine_model") == "served-model"
    with FakeEngine(load_cached("tiny-llama").tokenizer, name="another-served-model") as server:
        assert main(_cli(tmp_path, server.url)) == 2
    assert "engine_model: 'served-model' -> 'another-served-model'" in capsys.readouterr().err


def test_ctrl_c_exits_130_within_a_second_during_a_hung_request(tmp_path):
    with FakeEngine(load_cached("tiny-llama").tokenizer, always="hang") as server:
        # PYTHONFAULTHANDLER: if the child does not exit, SIGABRT makes it print every thread's stack (below)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PYTHONFAULTHANDLER": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "persona_lens", *_cli(tmp_path, server.url)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not an ignored SIGINT inherited
        )
        deadline = time.monotonic() + 120
        while server.counts["fault:hang"] == 0 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert server.counts["fault:hang"] >= 1, process.communicate()
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:  # communicate, not wait: the child's output is read as it comes (a full pipe would block its exit)
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, err = process.communicate()
            raise AssertionError(f"no exit 10 s after Ctrl-C; the child's stacks:\n{err[-6000:]}") from None
        took = time.monotonic() - sent
    assert process.returncode == 130, err[-2000:]
    assert took < 1.0, f"exited {took:.2f} s after Ctrl-C"
    assert "interrupted" in err
