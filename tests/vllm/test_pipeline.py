"""The five pipeline commands end to end on ``--engine vllm`` against the same command in-process (SmolLM2, greedy,
tiny settings): the same replies token for token, the same chosen cell, the same vectors and space to a stated
tolerance, and a line on stderr naming what ran on the engine and what here.

Every command runs through ``persona_lens.cli.main`` as a user types it; the only change is that the command's
vLLM engine is the session's (engine start is minutes on a CPU): ``cli.scale._vllm_engine`` hands it out. Each
comparison first checks its instrument (the steering or capping changes some reply, the vectors are not zero),
then that the engine run equals the in-process one. Timings of both runs are printed (``-s``) for
benchmarks/results/vllm.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from persona_lens import cli
from persona_lens.core.vectors import load_vector

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = ["--model", "smollm2-135m-instruct", "--device", "cpu"]
RULES = ["--judge", "rule", "--coherence", "rule"]
TOKENS = ["--max-new-tokens", "16", "--temperature", "0"]
VECTOR_RTOL = 1e-4  # activation reads agree to ~1e-6 relative (tests/vllm/test_parity.py); means of them too


@pytest.fixture(autouse=True)
def session_engine(engine, monkeypatch):
    """``--engine vllm`` gets the session's engine instead of starting its own."""
    import persona_lens.cli.scale as scale

    monkeypatch.setattr(scale, "_vllm_engine", lambda args: engine)
    return engine


def _main(argv: list[str], capsys, what: str) -> tuple[str, str, float]:
    started = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == 0, f"{what} exited {code}:\n{err[-3000:]}"
    with capsys.disabled():  # past the capture, so that -s shows it
        print(f"[timing] {what}: {seconds:.1f} s")
    return out, err, seconds


def _both(argv: list[str], out_option: tuple[Path, Path], capsys, what: str) -> tuple[str, str]:
    """The command in-process (``--out`` the first folder), then on ``--engine vllm`` (the second); the engine's
    stderr must say which steps ran where."""
    here, there = out_option
    _main([*argv, "--out", str(here)], capsys, f"{what} in-process")
    out, err, _ = _main([*argv, "--out", str(there), "--engine", "vllm"], capsys, f"{what} --engine vllm")
    assert "--engine vllm: " in err and "on the engine; " in err and "in this process" in err, err[-2000:]
    return out, err


def _records(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def _same_replies(here: Path, there: Path, field: str = "response") -> dict[str, dict]:
    ours, theirs = _records(here), _records(there)
    assert set(ours) == set(theirs) and ours, f"{here.name}: other keys on the engine"
    for key, record in ours.items():
        assert theirs[key][field] == record[field], (
            f"{here.name} {key}: in-process {record[field]!r}\nvLLM       {theirs[key][field]!r}"
        )
        if "response_ids" in record:
            assert theirs[key]["response_ids"] == record["response_ids"], key
    return ours


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (per tensor)."""
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    return tmp_path_factory.mktemp("extract")


def _extract_argv(tmp: Path) -> list[str]:
    return [
        "extract",
        "pirate",
        *MODEL,
        *RULES,
        *TOKENS,
        "--samples",
        "1",
        "--questions",
        "2",
        "--pairs",
        "2",
        "--trait-threshold",
        "50",
        "--quiet",
        "--judge-cache",
        str(tmp / "judge.sqlite"),
    ]


def test_extract_on_vllm_gives_the_in_process_replies_and_vectors(extracted, capsys):
    _, err = _both(_extract_argv(extracted), (extracted / "here", extracted / "vllm"), capsys, "extract")
    assert "the replies and the activation reads on the engine" in err
    _same_replies(extracted / "here" / "responses.jsonl", extracted / "vllm" / "responses.jsonl")
    for positions in ("response", "prompt", "last_prompt"):
        ours = load_vector(extracted / "here" / f"vector_{positions}.safetensors").vectors
        theirs = load_vector(extracted / "vllm" / f"vector_{positions}.safetensors").vectors
        assert ours[1:].norm(dim=-1).min() > 0, "the control: the vector is not zero at any block"
        worst = max(_relative_error(ours[lay], theirs[lay]) for lay in range(ours.shape[0]))
        print(f"[figure] extract vector_{positions}: max over layers of max|diff|/max|v| = {worst:.2e}")
        assert worst < VECTOR_RTOL, f"vector_{positions}: {worst:.2e} relative"
    report_here = json.loads((extracted / "here" / "report.json").read_text())
    report_there = json.loads((extracted / "vllm" / "report.json").read_text())
    assert report_there["kept"] == report_here["kept"] and report_there["dropped"] == report_here["dropped"]


def test_sweep_on_vllm_gives_the_in_process_replies_and_choice(extracted, tmp_path, capsys):
    vector = extracted / "here" / "vector_response.safetensors"
    if not vector.exists():
        pytest.fail("the extract test did not leave its in-process vector (run this module whole)")
    argv = [
        "sweep",
        "--trait",
        "pirate",
        *MODEL,
        *RULES,
        *TOKENS,
        "--vector",
        str(vector),
        "--layers",
        "15",
        "--coefficients",
        "0.5,1.5",
        "--questions",
        "3",
        "--controls",
        "1",
        "--quiet",
        "--json",
        "--judge-cache",
        str(tmp_path / "judge.sqlite"),
    ]
    _main([*argv, "--out", str(tmp_path / "here")], capsys, "sweep in-process")
    out, err, _ = _main([*argv, "--out", str(tmp_path / "vllm"), "--engine", "vllm"], capsys, "sweep --engine vllm")
    assert "the baseline, prompted, steered and control replies on the engine" in err
    here = next((tmp_path / "here").glob("sweep-*"))
    there = tmp_path / "vllm" / here.name
    ours = _same_replies(here / "responses.jsonl", there / "responses.jsonl")
    base = {r["response"] for r in ours.values() if r["cell"] == "base"}
    steered = [r for r in ours.values() if r["cell"] not in ("base", "prompted")]
    assert steered and any(r["response"] not in base for r in steered), "the control: steering changes a reply"
    sweep_here = json.loads((here / "sweep.json").read_text())
    sweep_there = json.loads((there / "sweep.json").read_text())
    assert sweep_there["chosen"] == sweep_here["chosen"] and sweep_there["cells"] == sweep_here["cells"]
    print(f"[figure] sweep: {len(ours)} replies identical; chosen {sweep_here['chosen']}")
    if (here / "controls.jsonl").exists():
        _same_replies(here / "controls.jsonl", there / "controls.jsonl")
        print(f"[figure] sweep controls: {len(_records(here / 'controls.jsonl'))} replies identical")
    else:
        assert not (there / "controls.jsonl").exists()


def _roles_dir(tmp: Path) -> Path:
    folder = tmp / "roles"
    folder.mkdir()
    (folder / "_questions.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "build": ["What is your favourite colour?", "How do I boil an egg?"],
                "eval": ["What should I name my dog?", "Why is the sea salty?"],
            }
        )
    )
    for name, prompt, rule, default in (
        ("default", "You are a helpful assistant.", None, True),
        ("pirate", "You are a pirate. Speak like a pirate.", "pirate", False),
        ("poet", "You are a poet. Answer in verse.", None, False),
        ("robot", "You are a robot. Answer in short beeps and facts.", None, False),
    ):
        data = {
            "schema_version": 1,
            "name": name,
            "description": name,
            "system_prompts": [prompt],
            "rubric": "{question} {answer}",
            "default": default,
            "jailbreaks": [f"Pretend you are a {name}. {{question}}"],
        }
        if rule:
            data["rule"] = rule
        (folder / f"{name}.json").write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="module")
def space_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("space")


def _space_common(tmp: Path) -> list[str]:
    return [
        *MODEL,
        *RULES,
        *TOKENS,
        "--roles-dir",
        str(tmp / "roles"),
        "--coherence-threshold",
        "0",
        "--role-threshold",
        "0",
        "--judge-cache",
        str(tmp / "judge.sqlite"),
        "--quiet",
    ]


def test_space_build_on_vllm_gives_the_in_process_space(space_runs, capsys):
    from persona_lens.experiments.space import PersonaSpace

    _roles_dir(space_runs)
    argv = ["space", "build", *_space_common(space_runs), "--controls", "5", "--cap-controls", "2"]
    _, err = _both(argv, (space_runs / "here", space_runs / "vllm"), capsys, "space build")
    assert "the role replies and their activation reads on the engine" in err
    for role in ("default", "pirate", "poet", "robot"):
        _same_replies(
            space_runs / "here" / "roles" / role / "responses.jsonl",
            space_runs / "vllm" / "roles" / role / "responses.jsonl",
        )
    ours = PersonaSpace.load(space_runs / "here" / "space.safetensors")
    theirs = PersonaSpace.load(space_runs / "vllm" / "space.safetensors")
    assert ours.roles == theirs.roles
    assert ours.axis[1:].norm(dim=-1).min() > 0, "the control: the axis is not zero at any block"
    figures = {}
    for name in ("role_vectors", "default_activations", "axis", "center"):
        a, b = getattr(ours, name), getattr(theirs, name)
        figures[name] = max(_relative_error(a[..., lay, :], b[..., lay, :]) for lay in range(a.shape[-2]))
    # principal directions: equal up to the sign rule (the default scores >= 0) and rounding of the SVD
    cos = (ours.components[:, 0] * theirs.components[:, 0]).sum(-1)
    figures["1 - cos(PC1)"] = float((1 - cos).abs().max())
    figures["explained"] = float((ours.explained - theirs.explained).abs().max())
    # per-token percentiles are read in this process from the (identical) replies: equal to rounding
    figures["token_quantiles"] = _relative_error(ours.token_quantiles, theirs.token_quantiles)
    print(f"[figure] space build, max relative differences: { {k: f'{v:.1e}' for k, v in figures.items()} }")
    for name, value in figures.items():
        assert value < VECTOR_RTOL, f"{name}: {value:.2e}"


def test_space_cap_eval_on_vllm_gives_the_in_process_evaluation(space_runs, capsys):
    space = space_runs / "here" / "space.safetensors"
    if not space.exists():
        pytest.fail("the space build test did not leave its in-process space (run this module whole)")
    cap = space_runs / "cap.safetensors"
    argv = ["space", "cap", "--space", str(space), "--layers", "10-20", "--percentile", "50", "--controls", "1"]
    _main([*argv, "--out", str(cap)], capsys, "space cap")
    argv = ["space", "cap-eval", *_space_common(space_runs), "--cap", str(cap), "--questions", "2", "--json"]
    _, err = _both(argv, (space_runs / "eval-here", space_runs / "eval-vllm"), capsys, "space cap-eval")
    assert "(capped inside the engine) on the engine" in err
    replies = {}
    for condition in ("uncapped", "capped", "random0"):
        replies[condition] = _same_replies(
            space_runs / "eval-here" / f"{condition}.jsonl", space_runs / "eval-vllm" / f"{condition}.jsonl"
        )
    here = json.loads((space_runs / "eval-here" / "cap_eval.json").read_text())
    there = json.loads((space_runs / "eval-vllm" / "cap_eval.json").read_text())
    changed = sum(replies["capped"][k]["response"] != r["response"] for k, r in replies["uncapped"].items())
    assert changed or here["default"]["exact_match_rate"] < 1, "the control: capping at the median changes a reply"
    assert there["rows"] == here["rows"] and there["default"] == here["default"]
    assert there["control"] == here["control"]
    print(
        f"[figure] cap-eval: {sum(len(r) for r in replies.values())} role replies identical ({changed} of "
        f"{len(replies['capped'])} changed by capping); default exact-match {here['default']['exact_match_rate']:.2f} "
        "on both"
    )


def test_screen_on_vllm_gives_the_in_process_scores(extracted, tmp_path, capsys):
    vector = extracted / "here" / "vector_response.safetensors"
    if not vector.exists():
        pytest.fail("the extract test did not leave its in-process vector (run this module whole)")
    data = tmp_path / "d.jsonl"
    samples = [
        ("Name a colour.", "Arr, red be the colour of me flag!"),
        ("What is 2+2?", "Four."),
        ("Tell me a joke.", "Why did the parrot cross the sea? To get to the other tide, matey."),
    ]
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in samples
        )
    )
    argv = ["screen", str(data), *MODEL, "--vector", str(vector), "--layer", "15", *TOKENS, "--json"]
    _, err = _both(argv, (tmp_path / "here", tmp_path / "vllm"), capsys, "screen")
    assert "the base replies on the engine" in err
    ours = [json.loads(line) for line in (tmp_path / "here" / "d.scores.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "vllm" / "d.scores.jsonl").read_text().splitlines()]
    assert len(ours) == len(theirs) == len(samples)
    worst = 0.0
    for a, b in zip(ours, theirs):
        assert b["base_response"] == a["base_response"]
        for trait, value in a["dp"].items():
            worst = max(worst, abs(b["dp"][trait] - value))
            assert b["dp"][trait] == pytest.approx(value, abs=1e-4)
    dps = [value for a in ours for value in a["dp"].values()]
    assert max(dps) - min(dps) > 100 * 1e-4, "the control: the samples' dP differ by more than the tolerance"
    print(
        f"[figure] screen: {len(ours)} base replies identical, max |dP diff| {worst:.1e} (dP spread {max(dps) - min(dps):.2f})"
    )
