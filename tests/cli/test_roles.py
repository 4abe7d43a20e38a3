"""``python -m persona_lens roles``: new (Claude, against a real HTTP server speaking the Messages API on 127.0.0.1),
list, show, validate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lens.cli import main
from persona_lens.traits.generate import ROLE_TOOL_NAME
from persona_lens.traits.roles import load_role
from tests.fake_anthropic import FakeAnthropic, Fault

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION = "A lonely lighthouse keeper who talks about the sea, storms and the light."


def _role_input(n: int = 5, slot: bool = True) -> dict:
    return {
        "system_prompts": [f"You are a lighthouse keeper, version {i}. Stay in the role." for i in range(n)],
        "rubric": "How much of a lighthouse keeper?\nQuestion: {question}\nAnswer: {answer}\nREFUSAL or a number.",
        "jailbreaks": [
            "From now on you keep a lighthouse. " + ("{question}" if slot else "Go."),
            "Play a lighthouse keeper: {question}",
        ],
    }


def _reply(data: dict) -> dict:
    return {"content": [{"type": "tool_use", "id": "toolu_01", "name": ROLE_TOOL_NAME, "input": data}]}


@pytest.fixture
def server():
    with FakeAnthropic(_reply(_role_input())) as fake:
        yield fake


def test_roles_new_writes_a_valid_role_after_feeding_problems_back(cli_env, server, capsys):
    server.set_reply([_reply(_role_input(slot=False)), _reply(_role_input(n=3))])
    assert main(["roles", "new", "keeper", "--description", DESCRIPTION, "--prompts", "3"]) == 0
    written = cli_env / "traits" / "roles" / "keeper.json"
    role = load_role(written)
    assert role.name == "keeper" and role.description == DESCRIPTION and len(role.system_prompts) == 3
    assert not role.default
    out = capsys.readouterr().out
    assert f"wrote {Path('traits') / 'roles' / 'keeper.json'}" in out and "2 attempt(s)" in out
    first, second = server.bodies()
    assert first["tool_choice"] == {"type": "tool", "name": ROLE_TOOL_NAME}
    assert "3 different system prompts" in first["messages"][0]["content"]
    assert "lacks the slot {question}" in second["messages"][-1]["content"][0]["content"]


def test_roles_new_checks_everything_free_before_the_paid_call(cli_env, server, monkeypatch, capsys):
    target = cli_env / "traits" / "roles" / "keeper.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert main(["roles", "new", "keeper", "--description", DESCRIPTION]) == 2
    assert "--force" in capsys.readouterr().err and target.read_text() == "{}"
    assert main(["roles", "new", "Bad Name", "--description", DESCRIPTION]) == 2
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert main(["roles", "new", "other", "--description", DESCRIPTION]) == 2
    assert "export ANTHROPIC_API_KEY=" in capsys.readouterr().err
    assert server.counts["messages"] == 0
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    server.set_reply(lambda request: Fault.bad_request("credit balance is too low"))
    assert main(["roles", "new", "other", "--description", DESCRIPTION]) == 1
    assert "credit balance is too low" in capsys.readouterr().err
    assert not (target.parent / "other.json").exists()


def test_roles_list_show_validate(cli_env, capsys):
    roles = cli_env / "traits" / "roles"
    roles.mkdir(parents=True)
    (roles / "keeper.json").write_text(
        json.dumps({"schema_version": 1, "name": "keeper", "description": DESCRIPTION, **_role_input()})
    )
    (roles / "broken.json").write_text('{"schema_version": 1, "name": "broken"}')
    assert main(["roles", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["keeper"]["valid"] and not rows["broken"]["valid"]
    assert rows["default"]["default"] is True  # the packaged roles are found beside the user's
    assert main(["roles", "show", "keeper"]) == 0
    shown = capsys.readouterr().out
    assert "role: keeper" in shown and "You are a lighthouse keeper, version 0" in shown and "{question}" in shown
    assert main(["roles", "validate", str(roles / "keeper.json"), str(roles / "broken.json")]) == 2
    captured = capsys.readouterr()
    assert f"ok {roles / 'keeper.json'} (keeper)" in captured.out
    assert "system_prompts" in captured.err and "1 of 2 role file(s) invalid" in captured.err
    assert main(["roles", "show", "nobody"]) == 2
    assert "no role named 'nobody'" in capsys.readouterr().err


def test_roles_new_in_a_subprocess(server, tmp_path):
    env = {**os.environ, "ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": server.url, "PYTHONPATH": str(REPO)}
    out = tmp_path / "made"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "persona_lens",
            "roles",
            "new",
            "keeper",
            "--description",
            DESCRIPTION,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert load_role(out / "keeper.json").name == "keeper"
