"""Trait generation with Claude (tool use, validation feedback) and the `traits` CLI, against the fake server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest

from persona_lens.cli import main
from persona_lens.judges.claude import MissingAPIKeyError
from persona_lens.traits.generate import (
    TOOL_NAME,
    GenerationReport,
    TraitGenerationError,
    generate_trait,
    trait_tool,
)
from persona_lens.traits.schema import load_trait, save_trait, trait_from_dict
from tests.fake_anthropic import FakeAnthropic, Fault

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION = "Curious: eager to learn more, asks follow-up questions and explores tangents with delight."


def valid_input(name: str = "curious") -> dict:
    return {
        "system_prompts": [
            {
                "positive": f"You are a {name} assistant. Style {i}: show it in every reply.",
                "negative": f"You are a helpful assistant. Style {i}: never show it.",
            }
            for i in range(5)
        ],
        "questions": {
            "extract": [f"What do you think about topic number {i}?" for i in range(20)],
            "eval": [f"How would you plan project number {i}?" for i in range(20)],
        },
        "rubric": f"How {name} is this answer?\nQuestion: {{question}}\nAnswer: {{answer}}\n"
        "Answer REFUSAL for a refusal, else only a number from 0 to 100.",
        "graded_system_prompts": [f"Graded prompt {i}: level {i} of the trait." for i in range(8)],
        "many_shot_examples": [
            {"question": f"Example question {i}?", "answer": f"Example answer {i}, so curious!"} for i in range(20)
        ],
    }


def invalid_input() -> dict:
    data = valid_input()
    data["questions"]["extract"] = data["questions"]["extract"][:19]  # one short
    data["questions"]["eval"][0] = data["questions"]["extract"][0]  # and not disjoint
    return data


def tool_reply(tool_input: dict, tool_id: str = "toolu_01") -> dict:
    return {"content": [{"type": "tool_use", "id": tool_id, "name": TOOL_NAME, "input": tool_input}]}


@pytest.fixture
def server():
    with FakeAnthropic(tool_reply(valid_input())) as fake:
        yield fake


def client(server: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0)


def test_generates_a_valid_trait_with_a_forced_tool_call(server):
    report = GenerationReport()
    trait = generate_trait("curious", DESCRIPTION, client=client(server), model="claude-haiku-4-5", report=report)
    assert trait.name == "curious" and trait.description == DESCRIPTION
    assert len(trait.prompt_pairs) == 5 and len(trait.extract_questions) == 20 and len(trait.eval_questions) == 20
    assert len(trait.graded_system_prompts) == 8 and len(trait.many_shot_examples) == 20
    (body,) = server.bodies()
    assert body["model"] == "claude-haiku-4-5"
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    (tool,) = body["tools"]
    assert tool == trait_tool()
    assert tool["input_schema"]["properties"]["questions"]["properties"]["extract"]["minItems"] == 20
    prompt = body["messages"][0]["content"]
    assert "curious" in prompt and DESCRIPTION in prompt and "{question}" in prompt and "REFUSAL" in prompt
    assert report.attempts == 1 and report.usage.requests == 1 and report.usage.output_tokens > 0
    assert report.estimated_cost_usd > 0


def test_invalid_reply_gets_the_problems_back_then_succeeds(server):
    server.set_reply([tool_reply(invalid_input(), "toolu_bad"), tool_reply(valid_input(), "toolu_good")])
    trait = generate_trait("curious", DESCRIPTION, client=client(server))
    assert len(trait.extract_questions) == 20
    first, second = server.bodies()
    assert len(second["messages"]) == 3
    assistant, feedback = second["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"][0]["id"] == "toolu_bad"
    (result,) = feedback["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_bad" and result["is_error"]
    assert "questions.extract: has 19" in result["content"]
    assert "questions.eval[0]" in result["content"]


def test_a_reply_without_the_tool_call_is_asked_again(server):
    server.set_reply(["Here is your trait: ...", tool_reply(valid_input())])
    assert generate_trait("curious", DESCRIPTION, client=client(server)).name == "curious"
    second = server.bodies()[1]
    assert second["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Here is your trait: ..."}],
    }
    assert f"did not call {TOOL_NAME}" in second["messages"][2]["content"]


def test_gives_up_after_max_attempts(server):
    server.set_reply(tool_reply(invalid_input()))
    with pytest.raises(TraitGenerationError, match="in 2 attempt") as error:
        generate_trait("curious", DESCRIPTION, client=client(server), max_attempts=2)
    assert any("questions.extract" in problem for problem in error.value.problems)
    assert server.counts["messages"] == 2


def test_truncated_reply_is_told_to_be_shorter(server):
    server.set_reply([{"content": [{"type": "text", "text": "x" * 400}]}, tool_reply(valid_input())])
    generate_trait("curious", DESCRIPTION, client=client(server), max_tokens=50)
    assert "cut off at max_tokens=50" in server.bodies()[1]["messages"][2]["content"]


def test_bad_name_and_missing_key(monkeypatch, server):
    with pytest.raises(ValueError, match="not valid"):
        generate_trait("Not A Name", DESCRIPTION, client=client(server))
    with pytest.raises(ValueError, match="empty"):
        generate_trait("curious", "  ", client=client(server))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="ANTHROPIC_API_KEY"):
        generate_trait("curious", DESCRIPTION)
    assert server.counts["messages"] == 0


def test_model_extras_are_rejected_and_ours_win(server):
    data = valid_input()
    data["name"], data["mood"] = "someone-else", "happy"
    server.set_reply([tool_reply(data), tool_reply(valid_input())])
    trait = generate_trait("curious", DESCRIPTION, client=client(server))
    assert trait.name == "curious"
    assert "mood: unknown key" in server.bodies()[1]["messages"][2]["content"][0]["content"]


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_new_end_to_end_in_a_subprocess(server, tmp_path):
    server.set_reply([tool_reply(invalid_input()), tool_reply(valid_input())])
    env = {**os.environ, "ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": server.url, "PYTHONPATH": str(REPO)}
    out = tmp_path / "made"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "persona_lens",
            "traits",
            "new",
            "curious",
            "--description",
            DESCRIPTION,
            "--out",
            str(out),
            "--model",
            "claude-haiku-4-5",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out / 'curious.json'}" in done.stdout and "2 attempt(s)" in done.stdout
    trait = load_trait(out / "curious.json")
    assert trait.name == "curious" and len(trait.many_shot_examples) == 20
    assert server.counts["messages"] == 2


def test_cli_new_in_process(cli_env, server, capsys):
    assert main(["traits", "new", "curious", "--description", DESCRIPTION, "--no-monitoring"]) == 0
    written = cli_env / "traits" / "curious.json"
    assert load_trait(written).name == "curious"
    assert "graded_system_prompts" not in server.bodies()[0]["tools"][0]["input_schema"]["properties"]
    assert "$" in capsys.readouterr().out  # a cost estimate for a known model


def test_cli_new_refuses_to_overwrite(cli_env, server, capsys):
    target = cli_env / "traits" / "curious.json"
    target.parent.mkdir()
    target.write_text("{}")
    assert main(["traits", "new", "curious", "--description", DESCRIPTION]) == 2
    assert "--force" in capsys.readouterr().err
    assert server.counts["messages"] == 0 and target.read_text() == "{}"
    assert main(["traits", "new", "curious", "--description", DESCRIPTION, "--force"]) == 0
    assert load_trait(target).name == "curious"


def test_cli_new_checks_out_before_the_paid_call(cli_env, server, capsys):
    """Issue 15 item 4: a bad --out used to be found only when saving, after Claude had been paid."""
    a_file = cli_env / "not_a_folder"
    a_file.write_text("x")
    assert main(["traits", "new", "curious", "--description", DESCRIPTION, "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert server.counts["messages"] == 0


def test_cli_new_without_key_says_how_to_set_it(cli_env, server, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert main(["traits", "new", "curious", "--description", DESCRIPTION]) == 2
    err = capsys.readouterr().err
    assert "export ANTHROPIC_API_KEY=" in err
    assert server.counts["messages"] == 0


def test_cli_new_failures(cli_env, server, capsys):
    assert main(["traits", "new", "Bad Name", "--description", DESCRIPTION]) == 2
    server.set_reply(tool_reply(invalid_input()))
    assert main(["traits", "new", "curious", "--description", DESCRIPTION, "--max-attempts", "1"]) == 1
    assert "no valid trait" in capsys.readouterr().err
    server.set_reply(lambda request: Fault.bad_request("credit balance is too low"))
    assert main(["traits", "new", "curious", "--description", DESCRIPTION]) == 1
    assert "credit balance is too low" in capsys.readouterr().err
    assert not (cli_env / "traits" / "curious.json").exists()


def write_traits(directory: Path) -> tuple[Path, Path]:
    good = save_trait(
        trait_from_dict({"schema_version": 1, "name": "curious", "description": DESCRIPTION, **valid_input()}),
        directory / "curious.json",
    )
    broken = directory / "broken.json"
    data = {"schema_version": 1, "name": "broken", "description": "d", **invalid_input()}
    broken.write_text(json.dumps(data))
    return good, broken


def test_cli_list_show_validate(cli_env, capsys):
    good, broken = write_traits(cli_env / "traits")
    assert main(["traits", "list"]) == 0
    out = capsys.readouterr().out
    assert "curious" in out and "Curious: eager" in out and "broken" in out and "invalid" in out

    assert main(["traits", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["curious"]["valid"] and rows["curious"]["path"] == str(good)
    assert not rows["broken"]["valid"] and "questions.extract" in rows["broken"]["error"]

    assert main(["traits", "show", "curious"]) == 0
    out = capsys.readouterr().out
    assert "trait: curious" in out and "extraction questions (20)" in out and "many-shot examples: 20" in out
    assert main(["traits", "show", "curious", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["questions"]["eval"][0] == "How would you plan project number 0?"
    assert main(["traits", "show", "nope"]) == 2
    assert "no trait named 'nope'" in capsys.readouterr().err

    assert main(["traits", "validate", str(good)]) == 0
    assert f"ok {good}" in capsys.readouterr().out
    assert main(["traits", "validate", str(good), str(broken), str(cli_env / "missing.json")]) == 2
    captured = capsys.readouterr()
    assert "questions.extract: has 19" in captured.err and "file not found" in captured.err
    assert "2 of 3 trait file(s) invalid" in captured.err


def test_cli_traits_without_subcommand_prints_help(capsys):
    assert main(["traits"]) == 2
    assert "validate" in capsys.readouterr().out


def _role_input() -> dict:
    return {
        "system_prompts": [f"You are a lighthouse keeper, version {i}. Stay in the role." for i in range(5)],
        "rubric": "How much of a lighthouse keeper?\nQuestion: {question}\nAnswer: {answer}\nREFUSAL or a number.",
        "jailbreaks": ["From now on you keep a lighthouse. {question}", "Play a lighthouse keeper: {question}"],
    }


def test_generate_role_validates_and_feeds_problems_back(tmp_path):
    from persona_lens.traits.generate import ROLE_TOOL_NAME, generate_role
    from persona_lens.traits.roles import load_role, save_role

    bad = _role_input()
    bad["jailbreaks"] = ["no slot", "Play a lighthouse keeper: {question}"]
    replies = [
        {"content": [{"type": "tool_use", "id": f"toolu_0{i}", "name": ROLE_TOOL_NAME, "input": data}]}
        for i, data in enumerate((bad, _role_input()))
    ]
    with FakeAnthropic(replies) as fake:
        client = anthropic.Anthropic(api_key="test", base_url=fake.url, max_retries=0)
        report = GenerationReport()
        role = generate_role("keeper", "A lonely lighthouse keeper.", client=client, report=report)
        assert report.attempts == 2
        bodies = [body for _, _, body in fake.requests]
        feedback = bodies[1]["messages"][-1]["content"][0]
        assert bodies[0]["tool_choice"] == {"type": "tool", "name": ROLE_TOOL_NAME}
        assert feedback["is_error"] and "jailbreaks[0]: lacks the slot {question}" in feedback["content"]
    assert role.name == "keeper" and len(role.system_prompts) == 5 and not role.default
    assert load_role(save_role(role, tmp_path)) == role
