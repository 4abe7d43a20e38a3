"""Issue 15: bad input never becomes a silent wrong result, and no crash leaves a run stuck.

Each test names the item of the issue it guards. CLI tests call ``persona_lens.cli.main`` in-process; where the
refusal must come before any model is loaded, the model named is one that does not exist, so a test that got past
the check would fail on the model instead.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from persona_lens.cli import main
from persona_lens.core.io import JsonlRecords
from persona_lens.core.vectors import PersonaVector, save_vector
from tests.conftest import load_cached, tiny_extract_args

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = "no-such-model-loaded-before-the-check"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the CLI; argparse's refusals (SystemExit) count as exit codes."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _vector_file(path: Path, model_name: str = "tiny-llama", zero_layer: int | None = None) -> Path:
    model = load_cached(model_name)
    tensor = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model)
    if zero_layer is not None:
        tensor[zero_layer] = 0
    return save_vector(PersonaVector("pirate", model_name, tensor, "response"), path)


# --- item 1 and 3: numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "--coefficients", "0.1,nan"], "must be a finite number"),
        (["sweep", "--coefficients", "inf"], "must be a finite number"),
        (["sweep", "--coefficients", "1e400"], "must be a finite number"),
        (["sweep", "--extract-temperature", "nan"], "--extract-temperature must be a finite number"),
        (["extract", "pirate", "--trait-threshold", "nan"], "--trait-threshold must be a finite number"),
        (["extract", "pirate", "--temperature", "nan"], "--temperature must be a finite number"),
        (["extract", "pirate", "--temperature", "-1"], "--temperature must be >= 0 (0 = greedy)"),
        (["extract", "pirate", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["extract", "pirate", "--batch-size", "-1"], "--batch-size must be >= 1"),
        (["extract", "pirate", "--pairs", "-1"], "--pairs must be >= 1"),
        (["extract", "pirate", "--questions", "-2"], "--questions must be >= 1"),
        (["extract", "pirate", "--samples", "two"], "--samples must be an integer, got 'two'"),
        (["finetune", "--data", "d.jsonl", "--out", "o", "--steer-coef", "nan"], "--steer-coef must be a finite"),
        (["finetune", "--data", "d.jsonl", "--out", "o", "--lr", "inf"], "--lr must be a finite number"),
        (
            ["screen", "d.jsonl", "--vector", "v", "--layer", "1", "--out", "o", "--top-p", "0"],
            "--top-p must be in (0, 1]",
        ),
        (
            ["monitor", "sweep", "--trait", "pirate", "--layer", "1", "--temperature=-inf"],
            "--temperature must be a finite number",
        ),
        (
            ["export", "v.safetensors", "--format", "gguf", "--out", "o.gguf", "--coefficient", "nan"],
            "--coefficient must be a finite number",
        ),
    ],
)
def test_cli_refuses_bad_numbers_with_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli([*argv, "--model", NO_MODEL] if argv[0] in ("sweep", "extract") else argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_and_api_refuse_with_the_same_sentence(capsys):
    from persona_lens.core.validate import BadValue, temperature

    with pytest.raises(BadValue) as api:
        temperature(-1.0, "--temperature")
    code, err = run_cli(["extract", "pirate", "--temperature", "-1", "--model", NO_MODEL], capsys)
    assert code == 2 and str(api.value) in err


def test_batch_size_is_a_recorded_setting(tmp_path, capsys):
    """Item 3: replies made at one batch size are not silently mixed with replies made at another."""
    out = tmp_path / "run"
    base = [
        *tiny_extract_args(max_new_tokens=3),
        "--out",
        out,
        "--extract-coherence-threshold",
        "0",
        "--trait-threshold",
        "0",
    ]
    code, err = run_cli([*base, "--batch-size", "2"], capsys)
    assert code in (0, 2), err  # the filters may keep no pair on a random model; the replies are on disk either way
    assert json.loads((out / "settings.json").read_text())["batch_size"] == 2
    code, err = run_cli([*base, "--batch-size", "3"], capsys)
    assert code == 2 and "batch_size: 2 -> 3" in err


# --- item 4: traits new checks --out before the paid call: see tests/traits/test_generate.py ---------------------
# --- item 5: auth errors stop judging: see tests/judges/test_claude.py ----------------------------------------------


# --- item 6 ---------------------------------------------------------------------------------------------------------


def test_screen_on_an_empty_or_blank_dataset_is_exit_2(tmp_path, capsys):
    vector = _vector_file(tmp_path / "v.safetensors")
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")):
        data = tmp_path / name
        data.write_text(text)
        code, err = run_cli(
            [
                "screen",
                data,
                "--vector",
                vector,
                "--layer",
                "1",
                "--model",
                "tiny-llama",
                "--out",
                tmp_path / f"out-{name}",
                "--quiet",
            ],
            capsys,
        )
        assert code == 2 and "holds no record" in err and "Traceback" not in err


def test_finetune_skips_a_non_utf8_line_and_names_it(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]})
    data.write_bytes(good.encode() + b"\n" + good.encode().replace(b"ho", b"h\xe9") + b"\n" + good.encode() + b"\n")
    code, err = run_cli(
        [
            "finetune",
            "--data",
            data,
            "--model",
            "tiny-llama",
            "--out",
            tmp_path / "ft",
            "--max-steps",
            "1",
            "--quiet",
            "--batch-size",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    assert f"{data}:2: skipped: not UTF-8 text" in err


# --- item 7: exit 2 and a message, not a traceback --------------------------------------------------------------------


def test_out_that_is_a_file_or_under_a_file_is_exit_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", out], capsys)
        assert code == 2 and "is a file" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: an unwritable folder cannot be made here")
def test_out_that_is_not_writable_is_exit_2(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", locked / "run"], capsys)
    assert code == 2 and "not writable" in err


def test_an_over_long_name_is_exit_2(tmp_path, capsys):
    code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", tmp_path / ("x" * 300)], capsys)
    assert code == 2 and "longer than 255 bytes" in err


def test_an_absent_device_is_exit_2(tmp_path, capsys):
    code, err = run_cli(
        ["extract", "pirate", "--model", "tiny-llama", "--device", "cuda:99", "--out", tmp_path / "o"], capsys
    )
    assert code == 2 and "'cuda:99' is not available here" in err
    code, err = run_cli(
        ["extract", "pirate", "--model", "tiny-llama", "--device", "gpu0", "--out", tmp_path / "o"], capsys
    )
    assert code == 2 and "unknown device 'gpu0'" in err


def test_a_non_utf8_prompts_file_is_exit_2_naming_the_line(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"hello\nbonjour \xe0 tous\n")
    code, err = run_cli(
        ["monitor", "project", "--vector", tmp_path / "v", "--layer", "1", "--prompts", prompts, "--model", NO_MODEL],
        capsys,
    )
    assert code == 2 and f"{prompts}:2: not UTF-8 text" in err


def test_an_all_zero_vector_layer_is_exit_2(tmp_path, capsys):
    vector = _vector_file(tmp_path / "v.safetensors", zero_layer=1)
    code, err = run_cli(
        ["monitor", "project", "--vector", vector, "--layer", "1", "--question", "hi", "--model", "tiny-llama"], capsys
    )
    assert code == 2 and "all zero at layer 1" in err


def test_exporting_a_nan_vector_is_exit_2(tmp_path, capsys):
    from tests.core.test_validate import _raw_vector_file

    tensor = torch.randn(3, 8)
    tensor[1, 1] = math.nan
    _raw_vector_file(tmp_path / "nan.safetensors", tensor)
    code, err = run_cli(
        ["export", tmp_path / "nan.safetensors", "--format", "npz", "--out", tmp_path / "o.npz"], capsys
    )
    assert code == 2 and "NaN or infinite" in err and not (tmp_path / "o.npz").exists()


def test_absurdly_nested_json_is_a_message_not_a_recursion_error(tmp_path, capsys):
    nested = "[" * 200_000 + "]" * 200_000
    trait = tmp_path / "deep.json"
    trait.write_text(nested)
    code, err = run_cli(["traits", "validate", trait], capsys)
    assert code == 2 and "nested too deeply" in err
    # a chat record: one bad record, named by its line
    from persona_lens.core.chat import read_chat_jsonl

    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n' + nested + "\n"
    )
    good, bad = read_chat_jsonl(data)
    assert len(good) == 1 and bad[0].line == 2 and "nested too deeply" in bad[0].problem
    # a results file: a damaged middle line names the file and the line
    records = tmp_path / "r.jsonl"
    records.write_text('{"key": "a"}\n' + nested + '\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl: line 2 \(byte 13\) is not a JSON record"):
        JsonlRecords(records).load()


def test_a_damaged_middle_line_of_the_replies_is_exit_2_naming_file_and_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "responses.jsonl").write_text('{"key": "a"}\n{"key": \n{"key": "b"}\n')
    code, err = run_cli(
        [
            "extract",
            "pirate",
            "--model",
            "tiny-llama",
            "--judge",
            "rule",
            "--coherence",
            "rule",
            "--samples",
            "1",
            "--questions",
            "1",
            "--pairs",
            "1",
            "--max-new-tokens",
            "3",
            "--out",
            out,
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "responses.jsonl: line 2" in err


# --- item 8 -----------------------------------------------------------------------------------------------------------


def test_written_files_follow_the_umask(tmp_path):
    """Vectors, exports and traits were 0600 (private temporary files); now 0666 & ~umask, like open()."""
    from persona_lens.experiments.export import export_npz
    from persona_lens.traits.schema import load_trait, save_trait

    old = os.umask(0o022)
    try:
        vector = _vector_file(tmp_path / "v.safetensors")
        from persona_lens.core.vectors import load_vector

        export_npz(load_vector(vector), tmp_path / "v.npz")
        trait = save_trait(load_trait("pirate"), tmp_path / "pirate.json")
        for path in (vector, tmp_path / "v.npz", trait):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(old)


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    vector = _vector_file(tmp_path / "v.safetensors")
    out = tmp_path / "v.npz"
    out.write_bytes(b"precious")
    code, err = run_cli(["export", vector, "--format", "npz", "--out", out], capsys)
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"
    code, err = run_cli(["export", vector, "--format", "npz", "--out", out, "--force"], capsys)
    assert code == 0 and out.read_bytes() != b"precious"


_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from persona_lens.core.io import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_out_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, capsys):
    from persona_lens.core.io import FolderLock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", out], capsys)
        assert code == 2 and f"in use by another run (pid {holder.pid})" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(out):  # the kernel dropped the dead process's lock: nothing to clear by hand
        pass
    code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", out], capsys)
    assert code == 2 and "cannot load model" in err  # past the lock, stopped by the (absent) model


def test_quiet_silences_hugging_face_progress_bars(tmp_path, capsys, monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    enable_progress_bars()
    try:
        run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", tmp_path / "o", "--quiet"], capsys)
        assert are_progress_bars_disabled()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        enable_progress_bars()


# --- item 9: llama.cpp usage --------------------------------------------------------------------------------------


def test_export_prints_current_llama_cpp_usage(tmp_path, capsys):
    pytest.importorskip("gguf")
    vector = _vector_file(tmp_path / "v.safetensors")
    code = main(["export", str(vector), "--format", "gguf", "--out", str(tmp_path / "v.gguf")])
    out = capsys.readouterr().out
    assert code == 0
    assert "llama-completion -m MODEL.gguf --control-vector" in out
    assert f"--control-vector-scaled {tmp_path / 'v.gguf'}:SCALE" in out
    assert "llama-cli" not in out


# --- item 1: training stops at the first non-finite loss ------------------------------------------------------------


def test_finetune_stops_at_the_first_non_finite_loss_keeping_the_last_good_state(tmp_path):
    from persona_lens.experiments.finetune import (
        TRAINER_STATE,
        FinetuneConfig,
        NonFiniteLossError,
        TrainingIntervention,
        finetune,
    )

    model = load_cached("tiny-llama")
    before = {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}
    data = [
        [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        for i in range(4)
    ]
    vector = torch.ones(model.cfg.n_layers + 1, model.cfg.d_model)
    huge = TrainingIntervention("steer", vector, layer=1, coef=3e38)  # finite, but overflows float32 in the model
    out = tmp_path / "ft"
    stopped = r"stopped at step 1 .*(the loss is (nan|inf)|a gradient holds NaN).* kept in"
    with pytest.raises(NonFiniteLossError, match=stopped):
        finetune(
            model, data, FinetuneConfig(batch_size=2, lr=1e-3), output_dir=out, interventions=[huge], progress=False
        )
    assert (out / TRAINER_STATE).is_dir() and not (out / "finetune.json").exists()
    for name, param in model.hf_model.named_parameters():  # no step was taken on the NaN loss
        assert torch.isfinite(param).all(), name
        torch.testing.assert_close(param, before[name])


# --- item 2: a crash inside a multi-byte character, then resume to the identical result ------------------------------

_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from persona_lens.core import io
    import persona_lens.experiments.extract as X
    from persona_lens.core.models import load_model
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.schema import load_trait

    real_append = io.JsonlRecords.append
    calls = {"n": 0}

    def append_then_die(self, records):
        calls["n"] += 1
        if calls["n"] < 2:
            return real_append(self, records)
        data = "".join(__import__("json").dumps(r, ensure_ascii=False) + "\\n" for r in records).encode()
        cut = next(i for i, byte in enumerate(data) if byte >= 0xF0) + 2  # inside a 4-byte emoji of a question
        with open(self.path, "ab") as handle:
            handle.write(data[:cut])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    io.JsonlRecords.append = append_then_die
    config = X.ExtractConfig(n_samples=2, n_questions=3, n_pairs=2, max_new_tokens=6, batch_size=2,
                             coherence_threshold=0.0)
    X.extract(load_model("tiny-qwen2", device="cpu"), load_trait(sys.argv[1]), judge=RuleJudge("shouting"),
              coherence_judge=RuleJudge("coherence"), config=config, out_dir=sys.argv[2], progress=False)
""")


def _french_shouting(tmp_path: Path) -> Path:
    data = json.loads((REPO / "traits" / "shouting.json").read_text())
    data["name"] = "shouting_fr"
    data["questions"]["extract"] = [
        "Qu'aimes-tu manger au petit-déjeuner ? 🥐",
        "Quelle est ta couleur préférée ? 🎨",
        *data["questions"]["extract"][2:],
    ]
    path = tmp_path / "shouting_fr.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_writer_killed_inside_a_multibyte_character_resumes_to_the_identical_result(tmp_path):
    import persona_lens.experiments.extract as X
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.schema import load_trait

    trait_path = _french_shouting(tmp_path)
    killed = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(trait_path), str(killed)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    raw = (killed / "responses.jsonl").read_bytes()
    assert not raw.endswith(b"\n")
    with pytest.raises(UnicodeDecodeError):
        raw.splitlines()[-1].decode("utf-8")  # the torn tail ends inside a character

    config = X.ExtractConfig(
        n_samples=2, n_questions=3, n_pairs=2, max_new_tokens=6, batch_size=2, coherence_threshold=0.0
    )
    model = load_cached("tiny-qwen2")
    trait = load_trait(str(trait_path))

    def run(out: Path):
        """The vector (None when no pair passes the filters on this random model) and the replies on disk."""
        try:
            vector = X.extract(
                model,
                trait,
                judge=RuleJudge("shouting"),
                coherence_judge=RuleJudge("coherence"),
                config=config,
                out_dir=out,
                progress=False,
            ).vector.vectors
        except ValueError as error:
            assert "no pair passed" in str(error)
            vector = None
        return vector, JsonlRecords(out / "responses.jsonl").load()

    resumed_vector, resumed = run(killed)
    fresh_vector, fresh = run(tmp_path / "fresh")
    assert set(resumed) == set(fresh) and len(fresh) == 2 * 3 * 2 * 2
    for key, record in fresh.items():
        assert resumed[key]["response_ids"] == record["response_ids"]
        assert resumed[key]["question_text"] == record["question_text"]
    lines = (killed / "responses.jsonl").read_bytes().decode("utf-8").splitlines()  # whole UTF-8 again
    fresh_lines = (tmp_path / "fresh" / "responses.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(fresh_lines)  # nothing lost, nothing duplicated
    assert (resumed_vector is None) == (fresh_vector is None)
    if fresh_vector is not None:
        torch.testing.assert_close(resumed_vector, fresh_vector)
