"""The CLI's first hour: extraction folders per setting, options checked before a model loads, one --vector rule,
plain help text."""

from pathlib import Path

import pytest

from persona_lens.cli import main
from persona_lens.cli.options import default_run_dir

NO_MODEL = "/nonexistent/model-folder"  # loading it would fail: an error about anything else came first


def _extract(tmp_path, *extra):
    return main(
        [
            "extract",
            "organism_evil",
            "--model",
            "persona-organism",
            "--samples",
            "2",
            "--questions",
            "3",
            "--judge",
            "rule",
            "--judge-cache",
            str(tmp_path / "cache.sqlite"),
            "--quiet",
            *extra,
        ]
    )


def test_extractions_with_other_settings_get_their_own_default_folders(tmp_path, monkeypatch, capsys):
    """`extract` after the default sweep's quick extraction must not fail on a shared folder."""
    monkeypatch.chdir(tmp_path)
    assert _extract(tmp_path, "--max-new-tokens", "12") == 0  # like the sweep's quick extraction
    assert _extract(tmp_path, "--max-new-tokens", "16") == 0  # like `extract` with its own defaults
    run_dir = default_run_dir("persona-organism", "organism_evil")
    folders = sorted(p.name for p in run_dir.glob("extract*"))
    assert folders == ["extract-t12-T1-p1-s0", "extract-t16-T1-p1-s0"]
    capsys.readouterr()
    # two candidate vectors: every command that would infer one asks for --vector, naming both
    code = main(
        [
            "monitor",
            "project",
            "--model",
            "persona-organism",
            "--trait",
            "organism_evil",
            "--layer",
            "1",
            "--question",
            "Hi",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "several vectors" in err and "extract-t12-T1-p1-s0" in err and "--vector" in err
    vector = run_dir / "extract-t12-T1-p1-s0" / "vector_response.safetensors"
    assert (
        main(
            [
                "monitor",
                "project",
                "--model",
                "persona-organism",
                "--vector",
                str(vector),
                "--layer",
                "1",
                "--question",
                "Hi",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "project", "--layer", "1", "--question", "Hi"],
        ["monitor", "tokens", "--layer", "1", "--question", "Hi", "--out", "x.html"],
        ["screen", "data.jsonl", "--layer", "1", "--out", "screen"],
        ["shift", "--finetuned", NO_MODEL, "--layer", "1", "--prompts", "prompts.txt", "--out", "shift"],
    ],
)
def test_every_command_without_vector_or_trait_asks_for_one_before_loading(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("data.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    Path("prompts.txt").write_text("Hi\n")
    assert main([*argv, "--model", NO_MODEL]) == 2
    assert "give --vector FILE, or --trait NAME" in capsys.readouterr().err


def test_a_trait_with_no_extracted_vector_names_the_extract_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "monitor",
                "tokens",
                "--model",
                NO_MODEL,
                "--trait",
                "pirate",
                "--layer",
                "1",
                "--question",
                "Hi",
                "--out",
                "x.html",
            ]
        )
        == 2
    )
    assert "python -m persona_lens extract pirate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extract", "evil", "--judge", "rule"], "has no rule"),
        (["sweep", "--trait", "evil", "--judge", "rule"], "has no rule"),
        (["extract", "evil", "--judge", "claude"], "ANTHROPIC_API_KEY"),
        (["monitor", "sweep", "--trait", "organism_evil", "--layer", "2"], "--kind system"),
    ],
)
def test_options_are_checked_before_a_model_is_loaded(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main([*argv, "--model", NO_MODEL]) == 2
    err = capsys.readouterr().err
    assert message in err and "cannot load model" not in err


def test_traits_help_has_no_raw_markup(capsys):
    with pytest.raises(SystemExit):
        main(["traits", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out
    assert "traits new NAME" in out and "traits validate PATH" in out
