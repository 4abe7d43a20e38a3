"""The shared option blocks (cli/options.py) keep every command's options as users' scripts know them: the same
names, the same defaults (value and type) and the same refusals of bad values, command by command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from persona_lens.cli import build_parser, main
from persona_lens.cli.options import add_generation_options
from persona_lens.cli.sweep import build_parser as build_sweep_module_parser

NO_MODEL = "/nonexistent/model-folder"  # loading it would fail: an error about anything else came first

MODEL = {"model": "smollm2-135m-instruct", "device": None, "dtype": None}
JUDGE = {"judge": "auto", "claude_model": None, "judge_cache": Path("runs/judge_cache.sqlite")}
CONTROLS = {"controls": 100, "control_seed": 0, "against": []}
SCALE = {
    "ray": None,
    "ray_workers": 2,
    "ray_gpus": 0,
    "ray_cpus": 1,
    "engine": None,
    "engine_model": None,
    "engine_concurrency": 8,
    "engine_timeout": None,
    "engine_any_name": False,
}
VECTOR = {"vectors": None, "allow_other_model": False}
PROMPTS = {"question": None, "system": None, "prompts": None}

SWEEP = {
    "trait": "enthusiastic",
    **MODEL,
    **VECTOR,
    "layers": None,
    "coefficients": None,
    "raw": False,
    "samples": 1,
    "questions": None,
    "max_new_tokens": 40,
    "temperature": 1.0,
    "positions": "response",
    "condition": "none",
    "coherence_threshold": 75.0,
    **JUDGE,
    "coherence": "offline",
    "extract_samples": 1,
    "extract_questions": None,
    "extract_pairs": None,
    "extract_max_new_tokens": 40,
    "extract_temperature": 1.0,
    "trait_threshold": 50.0,
    "extract_coherence_threshold": 50.0,
    "seed": 0,
    "batch_size": 64,
    "out": None,
    "quiet": False,
    "json": False,
    **CONTROLS,
    "controls": 3,
}

# The namespace each command parsed to with only its required arguments, taken before the option blocks were shared.
TODAY = {
    ("extract", "pirate"): {
        "command": "extract",
        "trait": "pirate",
        **MODEL,
        **JUDGE,
        "coherence": "offline",
        "samples": 10,
        "questions": None,
        "pairs": None,
        "max_new_tokens": 256,
        "temperature": 1.0,
        "trait_threshold": 50.0,
        "extract_coherence_threshold": 50.0,
        "seed": 0,
        "batch_size": 32,
        "out": None,
        "quiet": False,
        "json": False,
        **CONTROLS,
        **SCALE,
    },
    ("sweep",): {"command": "sweep", **SWEEP, **SCALE},
    ("monitor", "project", "--layer", "1"): {
        "command": "monitor",
        "monitor_command": "project",
        **MODEL,
        **VECTOR,
        "trait": None,
        "layer": "1",
        **PROMPTS,
        "batch_size": 8,
        "json": False,
    },
    ("monitor", "sweep", "--trait", "t", "--layer", "1"): {
        "command": "monitor",
        "monitor_command": "sweep",
        **MODEL,
        "trait": "t",
        **VECTOR,
        "layer": "1",
        "kind": "both",
        **JUDGE,
        "coherence": "offline",
        "no_coherence": False,
        "questions": None,
        "shots": [0, 5, 10, 15, 20],
        "samples": 1,
        "max_new_tokens": 128,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 8,
        "out": None,
        **CONTROLS,
        "json": False,
    },
    ("monitor", "tokens", "--layer", "1", "--out", "x.html"): {
        "command": "monitor",
        "monitor_command": "tokens",
        **MODEL,
        **VECTOR,
        "trait": None,
        "layer": "1",
        **PROMPTS,
        "max_new_tokens": 64,
        "temperature": 0.0,
        "seed": 0,
        "hide_prompt": False,
        "out": Path("x.html"),
        "json": False,
    },
    ("shift", "--finetuned", "m", "--layer", "1", "--out", "o"): {
        "command": "shift",
        **MODEL,
        "finetuned": ["m"],
        **VECTOR,
        "layer": "1",
        "trait": None,
        "prompts": None,
        "questions": None,
        "score": False,
        "score_base": False,
        "given_score": [],
        **JUDGE,
        "coherence": "offline",
        "samples": 1,
        "max_new_tokens": 128,
        "temperature": 1.0,
        "seed": 0,
        "batch_size": 8,
        "out": Path("o"),
        **CONTROLS,
        "json": False,
    },
    ("screen", "d.jsonl", "--layer", "1", "--out", "o"): {
        "command": "screen",
        "data": [Path("d.jsonl")],
        **MODEL,
        **VECTOR,
        "trait": None,
        "layer": "1",
        "out": Path("o"),
        "max_new_tokens": 256,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 8,
        "chunk_size": 64,
        "max_tokens": 2048,
        "limit": None,
        "cache": None,
        "rank_by": "dp",
        "top": None,
        "bins": 50,
        **CONTROLS,
        "quiet": False,
        "json": False,
        **SCALE,
    },
    ("finetune", "--data", "d", "--out", "o"): {
        "command": "finetune",
        **MODEL,
        "data": Path("d"),
        "out": Path("o"),
        "method": "lora",
        "rank": 32,
        "alpha": 64.0,
        "lora_dropout": 0.0,
        "targets": None,
        "lr": 1e-05,
        "epochs": 1,
        "batch_size": 8,
        "grad_clip": 1.0,
        "weight_decay": 0.0,
        "seed": 0,
        "max_tokens": 2048,
        "save_every": 0,
        "resume": False,
        "max_steps": None,
        "steer_vector": None,
        "steer_layer": None,
        "steer_coef": None,
        "incremental": False,
        "caft_vector": None,
        "caft_layer": None,
        "allow_other_model": False,
        "controls": 0,
        "control_seed": 0,
        "quiet": False,
        "json": False,
    },
}


def _typed(namespace: dict) -> dict:
    """Values with their types: a default of 1 where it was 1.0 is a change."""
    return {key: (type(value).__name__, repr(value)) for key, value in namespace.items() if key != "func"}


@pytest.mark.parametrize("argv", list(TODAY), ids=" ".join)
def test_each_command_parses_to_the_same_options_and_defaults(argv):
    parsed = vars(build_parser().parse_args(list(argv)))
    assert _typed(parsed) == _typed({"verbose": False, **TODAY[argv]})


def test_python_m_persona_lens_sweep_parses_as_the_sweep_subcommand():
    # the same options as `python -m persona_lens sweep`, --engine / --ray included (they were missing here)
    assert _typed(vars(build_sweep_module_parser().parse_args([]))) == _typed({**SWEEP, **SCALE})


# (command, its generation options): each refuses a bad value with the API's sentence naming the flag
GENERATION = [
    (["extract", "pirate"], ["--samples", "--max-new-tokens", "--temperature", "--seed", "--batch-size"]),
    (
        ["sweep"],
        [
            "--samples",
            "--max-new-tokens",
            "--temperature",
            "--seed",
            "--batch-size",
            "--extract-samples",
            "--extract-max-new-tokens",
            "--extract-temperature",
        ],
    ),
    (["monitor", "project", "--layer", "1"], ["--batch-size"]),
    (
        ["monitor", "sweep", "--trait", "pirate", "--layer", "1"],
        ["--samples", "--max-new-tokens", "--temperature", "--top-p", "--seed", "--batch-size"],
    ),
    (["monitor", "tokens", "--layer", "1", "--out", "x.html"], ["--max-new-tokens", "--temperature", "--seed"]),
    (
        ["shift", "--finetuned", NO_MODEL, "--layer", "1", "--out", "o"],
        ["--samples", "--max-new-tokens", "--temperature", "--seed", "--batch-size"],
    ),
    (
        ["screen", "d.jsonl", "--layer", "1", "--out", "o"],
        ["--max-new-tokens", "--temperature", "--top-p", "--seed", "--batch-size"],
    ),
]
REFUSED = {
    "samples": ("0", "must be >= 1, got 0"),
    "max-new-tokens": ("0", "must be >= 1, got 0"),
    "batch-size": ("-1", "must be >= 1, got -1"),
    "temperature": ("-1", "must be >= 0 (0 = greedy)"),
    "top-p": ("0", "must be in (0, 1]"),
    "seed": ("-1", "must be >= 0, got -1"),
}


@pytest.mark.parametrize(
    "argv, flag",
    [(argv, flag) for argv, flags in GENERATION for flag in flags],
    ids=lambda value: value if isinstance(value, str) else " ".join(value[:2]),
)
def test_generation_options_refuse_bad_values_naming_the_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text, message = REFUSED[flag.removeprefix("--extract-").removeprefix("--")]
    assert main([*argv, "--model", NO_MODEL, f"{flag}={text}"]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {flag} {message}" in err, err


GENERATION_DESTS = {"samples", "max_new_tokens", "temperature", "top_p", "seed", "batch_size"}


def _actions(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.Action]]:
    """``(command path, action)`` of every option of ``parser`` and of its subcommands, at any depth."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _actions(sub, f"{path} {name}".strip())
        else:
            found.append((path, action))
    return found


def _generation_actions() -> list[tuple[str, argparse.Action]]:
    # `space` keeps its own block (cli/space.py) for now
    return [
        (path, action)
        for path, action in _actions(build_parser())
        if action.dest.removeprefix("extract_") in GENERATION_DESTS and not path.startswith("space")
    ]


def test_every_generation_option_states_its_own_default_in_its_help():
    actions = _generation_actions()
    assert {path for path, _ in actions} >= {
        "extract",
        "sweep",
        "monitor project",
        "monitor sweep",
        "monitor tokens",
        "shift",
        "screen",
    }
    for path, action in actions:
        assert f"default {action.default:g}" in action.help, (path, action.option_strings, action.help)


def test_the_help_keeps_each_commands_own_wording():
    helps = {(path, action.dest): action.help for path, action in _generation_actions()}
    assert helps["shift", "samples"] == "replies per question when scoring (default 1)"
    assert helps["screen", "temperature"] == (
        "base response sampling temperature (0: greedy, independent of batching; default 0)"
    )
    assert helps["extract", "samples"] == (
        "replies per question and system prompt, each polarity (paper: 10; default 10)"
    )
    assert helps["sweep", "extract_max_new_tokens"] == "reply length limit (paper: 1000; default 40)"
    assert helps["monitor project", "batch_size"] == "prompts per forward pass (default 8)"


def test_an_unknown_help_key_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        add_generation_options(argparse.ArgumentParser(), seed=0, helps={"top_k": "nucleus"})


def test_an_option_without_a_default_is_not_added():
    parser = argparse.ArgumentParser()
    add_generation_options(parser, max_new_tokens=64, seed=0)
    assert {a.dest for a in parser._actions} == {"help", "max_new_tokens", "seed"}


@pytest.mark.parametrize(
    "option, value, message",
    [
        # a range was expanded into a list before any check: 1-999999999999 exhausted the memory (MemoryError)
        ("--layers", "1-999999999999", "spans 999,999,999,999 layers"),
        # a layer or coefficient given twice ran its cells twice and wrote each row twice into sweep.csv
        ("--layers", "2,2", "layer 2 is given twice"),
        ("--layers", "4-8,6", "layer 6 is given twice"),
        ("--coefficients", "1,1.0", "number 1 is given twice"),
    ],
)
def test_list_options_refuse_huge_ranges_and_repeats_before_the_model(capsys, option, value, message):
    assert main(["sweep", "--model", NO_MODEL, "--trait", "pirate", option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_long_range_within_bounds_still_parses():
    from persona_lens.cli.options import MAX_RANGE, parse_int_list

    assert parse_int_list(f"1-{MAX_RANGE}") == list(range(1, MAX_RANGE + 1))
    assert parse_int_list("6-8,2") == [6, 7, 8, 2]


def test_every_random_direction_count_is_bounded():
    """--controls had no upper bound: 10**9 random directions of SmolLM2's shape (31 x 576 floats) need ~71 TB."""
    from persona_lens.cli.options import MAX_CONTROLS

    found = [
        (path, action)
        for path, action in _actions(build_parser())
        + _actions(build_sweep_module_parser(), "python -m persona_lens.sweep")
        if {"--controls", "--cap-controls"} & set(action.option_strings)
    ]
    paths = {path for path, _ in found}
    assert {"extract", "sweep", "monitor sweep", "shift", "screen", "finetune", "space build"} <= paths, paths
    for path, action in found:
        assert action.type(str(MAX_CONTROLS)) == MAX_CONTROLS, path
        with pytest.raises(argparse.ArgumentTypeError, match=f"at most {MAX_CONTROLS:,} random directions"):
            action.type(str(MAX_CONTROLS + 1))
        with pytest.raises(argparse.ArgumentTypeError, match=">= "):
            action.type("-1")


def test_a_huge_controls_count_is_exit_2_before_the_model(capsys):
    assert (
        main(["monitor", "sweep", "--model", NO_MODEL, "--trait", "pirate", "--layer", "1", "--controls", "1e9"]) == 2
    )
    assert "--controls must be an integer" in capsys.readouterr().err
    assert (
        main(["monitor", "sweep", "--model", NO_MODEL, "--trait", "pirate", "--layer", "1", "--controls", "10001"]) == 2
    )
    assert "--controls must be at most 10,000 random directions" in capsys.readouterr().err
