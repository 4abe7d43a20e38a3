"""Issue 27 items 1 and 4-7 (and issue 25's Ray and subnormal cases, issue 26's two print paths): nothing a user
points us at gets overwritten or followed, numbers at the edges of float32 and records edited by hand are refused
with one sentence, and the tracebacks left are exit 2.

Everything runs through real files made in ``tmp_path``: FIFOs (``os.mkfifo``), symbolic links, and, as root, a
character device made with ``os.mknod`` from ``/dev/null``'s major/minor *inside tmp_path* (never a system path).
The engine faults are in ``tests/core/test_engine_faults.py``.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from persona_lens.cli import main
from persona_lens.core.io import FolderLock, JsonlRecords, UnsafeOutput, atomic_output, write_text_atomic
from persona_lens.core.vectors import PersonaVector, save_vector
from tests.conftest import load_cached, tiny_extract_args

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = "no-such-model-loaded-before-the-check"


def run_cli(argv: list, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _vector(path: Path, scale: float = 1.0, trait: str = "pirate") -> Path:
    model = load_cached("tiny-llama")
    tensor = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    return save_vector(PersonaVector(trait, "tiny-llama", tensor * scale, "response"), path)


def _special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a symbolic link to a file (whose content must survive), a dangling link and, as root, a character
    device with /dev/null's numbers: all inside tmp_path."""
    made = tmp_path / "specials"
    made.mkdir()
    target = made / "precious.txt"
    target.write_text("keep me")
    os.mkfifo(made / "fifo")
    (made / "link").symlink_to(target)
    (made / "dangling").symlink_to(made / "nowhere")
    files = {"fifo": made / "fifo", "link": made / "link", "dangling": made / "dangling"}
    if os.geteuid() == 0:
        null = os.stat("/dev/null").st_rdev
        os.mknod(made / "null", 0o666 | stat.S_IFCHR, os.makedev(os.major(null), os.minor(null)))
        files["device"] = made / "null"
    return files


def _unchanged(files: dict[str, Path]) -> None:
    assert stat.S_ISFIFO(os.lstat(files["fifo"]).st_mode)
    assert os.path.islink(files["link"]) and files["link"].read_text() == "keep me"
    assert os.path.islink(files["dangling"]) and not files["dangling"].exists()
    if "device" in files:
        assert stat.S_ISCHR(os.lstat(files["device"]).st_mode)


# --- item 1: output paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "link", "dangling", "device"])
def test_export_force_never_replaces_a_special_file_or_link(tmp_path, capsys, kind):
    """Old main, as root: `export ... --out /dev/null --force` replaced /dev/null with a regular file."""
    files = _special_files(tmp_path)
    if kind not in files:
        pytest.skip("a device node can only be made as root")  # visible: the FIFO and links still run
    vector = _vector(tmp_path / "v.safetensors")
    code, err = run_cli(["export", vector, "--format", "npz", "--out", files[kind], "--force"], capsys)
    assert code == 2 and str(files[kind]) in err and "Traceback" not in err
    assert "remove it or choose another path" in err
    _unchanged(files)


def test_space_cap_refuses_a_special_out_before_loading_anything(tmp_path, capsys):
    files = _special_files(tmp_path)
    for path in files.values():
        code, err = run_cli(["space", "cap", "--space", tmp_path / "no-space", "--layers", "1", "--out", path], capsys)
        assert code == 2 and str(path) in err, err
    _unchanged(files)


def test_writers_never_follow_or_replace_a_link_or_fifo(tmp_path):
    files = _special_files(tmp_path)
    for path in files.values():
        with pytest.raises(UnsafeOutput, match="remove it or choose another path"):
            write_text_atomic(path, "x")
        with pytest.raises(UnsafeOutput):
            with atomic_output(path):
                pass
        with pytest.raises(UnsafeOutput):
            JsonlRecords(path).append([{"key": "a"}])
    _unchanged(files)


def test_a_symlinked_lock_or_records_file_in_a_run_folder_is_refused(tmp_path, capsys):
    """Old main truncated the target of a symlinked lock file, and cut and appended to a symlinked
    responses.jsonl's target."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    argv = [
        *tiny_extract_args(max_new_tokens=3),
        "--judge-cache",
        tmp_path / "j.sqlite",
    ]
    for name in (FolderLock.NAME, "responses.jsonl", "settings.json"):
        run = tmp_path / f"run-{name}"
        run.mkdir()
        (run / name).symlink_to(target)
        code, err = run_cli([*argv, "--out", run], capsys)
        assert code == 2 and name in err and "symbolic link" in err, err
        assert target.read_text() == "keep me\n"
    with pytest.raises(UnsafeOutput):
        FolderLock(tmp_path / f"run-{FolderLock.NAME}").acquire()


def test_empty_and_over_long_out_are_exit_2(tmp_path, capsys, monkeypatch):
    """Old main: `extract --out ""` wrote the run's files into the current folder; an --out longer than PATH_MAX was
    an OSError traceback."""
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", ""], capsys)
    assert code == 2 and "empty" in err and list(tmp_path.iterdir()) == []
    deep = "/".join(["d" * 200] * 25)  # 5,025 bytes, every name legal
    code, err = run_cli(["extract", "pirate", "--model", NO_MODEL, "--out", deep], capsys)
    assert code == 2 and "4095" in err and "Traceback" not in err
    code, err = run_cli(["export", tmp_path / "v.safetensors", "--format", "npz", "--out", deep + "/v.npz"], capsys)
    assert code == 2 and "Traceback" not in err


# --- item 4: float32 edges --------------------------------------------------------------------------------------


def test_export_gguf_coefficients_beyond_float32_are_exit_2(tmp_path, capsys):
    """Old main: --coefficient 1e39 was a traceback and 3e38 silently wrote inf."""
    vector = _vector(tmp_path / "v.safetensors")
    for coefficient, message in (("1e39", "does not fit a float32"), ("3e38", "more than a float32 holds")):
        out = tmp_path / f"{coefficient}.gguf"
        code, err = run_cli(["export", vector, "--format", "gguf", "--out", out, "--coefficient", coefficient], capsys)
        assert code == 2 and message in err and "Traceback" not in err
        assert not out.exists()
    code, _ = run_cli(
        ["export", vector, "--format", "gguf", "--out", tmp_path / "ok.gguf", "--coefficient", "1e30"], capsys
    )
    assert code == 0  # |v| < 5 here: 1e30 * v fits


def test_importers_refuse_non_finite_and_float32_overflow(tmp_path):
    from persona_lens.core.vectors import VectorFileError, import_authors_pt
    from persona_lens.experiments.export import export_npz, import_npz

    export_npz(PersonaVector("pirate", "tiny-llama", torch.ones(3, 4), "response"), tmp_path / "v.npz")
    with np.load(tmp_path / "v.npz") as archive:
        arrays = dict(archive)
    for bad in (math.nan, math.inf):
        arrays["vectors"] = arrays["vectors"].copy()
        arrays["vectors"][1, 2] = bad
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(VectorFileError, match="NaN or infinite"):
            import_npz(tmp_path / "bad.npz")
    big = torch.ones(3, 4, dtype=torch.float64)
    big[2, 1] = 1e39
    torch.save(big, tmp_path / "big.pt")
    with pytest.raises(VectorFileError, match="beyond what float32 holds"):
        import_authors_pt(tmp_path / "big.pt", "pirate", "tiny-llama")


# --- item 5: records edited by hand ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("response_ids", "floats", "field 'response_ids' holds float"),
        ("response_ids", [-1], "outside the vocabulary"),
        ("response", 5, "field 'response' must be a string"),
        ("stopped", "yes", "field 'stopped' must be true or false"),
    ],
)
def test_records_edited_by_hand_are_exit_2_naming_file_line_and_field(tmp_path, capsys, field, value, message):
    """Old main: float token ids gave exit 0 and a wrong vector; wrong types gave tracebacks."""
    out = tmp_path / "run"
    argv = [
        "extract",
        "shouting",
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
        "--quiet",
        "--out",
        out,
        "--judge-cache",
        tmp_path / "j.sqlite",
    ]
    run_cli(argv, capsys)  # may keep no pair (exit 2): the records are written first
    lines = (out / "responses.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record[field] = [float(t) for t in record["response_ids"]] if value == "floats" else value
    lines[1] = json.dumps(record)
    (out / "responses.jsonl").write_text("\n".join(lines) + "\n")
    code, err = run_cli(argv, capsys)
    assert code == 2 and "responses.jsonl:2:" in err and message in err and "Traceback" not in err


# --- item 6: tracebacks left -------------------------------------------------------------------------------------


def test_roles_validate_handles_folders_nesting_and_the_questions_file(tmp_path, capsys):
    """Old main: `roles validate DIR` and a deeply nested role were tracebacks; the shipped folder exited 2 because
    _questions.json was checked as a role."""
    shipped = sorted((REPO / "traits" / "roles").glob("*.json"))
    code, err = run_cli(["roles", "validate", *shipped], capsys)
    assert code == 0, err
    code, err = run_cli(["roles", "validate", REPO / "traits" / "roles"], capsys)
    assert code == 0, err
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, err = run_cli(["roles", "validate", deep], capsys)
    assert code == 2 and "nested too deeply" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, err = run_cli(["roles", "validate", tmp_path / "empty"], capsys)
    assert code == 2 and "without .json files" in err


def test_drift_files_go_through_the_one_reader_before_any_model(tmp_path, capsys):
    """Old main: a non-UTF-8 --user-turns file and a deeply nested --conversation were tracebacks."""
    turns = tmp_path / "turns.txt"
    turns.write_bytes(b"hello\nbonjour \xe9t\xe9\n")
    common = [
        "space",
        "drift",
        "--space",
        tmp_path / "no-space",
        "--model",
        NO_MODEL,
        "--layer",
        "1",
        "--out",
        tmp_path / "out",
    ]
    code, err = run_cli([*common, "--user-turns", turns], capsys)
    assert code == 2 and "turns.txt:2: not UTF-8" in err and "Traceback" not in err
    nested = tmp_path / "conversation.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    code, err = run_cli([*common, "--conversation", nested], capsys)
    assert code == 2 and "nested too deeply" in err
    code, err = run_cli([*common, "--conversation", tmp_path], capsys)
    assert code == 2 and "is a folder" in err


def test_the_missing_value_formatter():
    from persona_lens.core.formatting import format_value

    assert [format_value(v) for v in (0.5, None, math.nan, True, "x", 3)] == [
        "0.50",
        "n/a",
        "n/a",
        "n/a",
        "n/a",
        "3.00",
    ]
    assert format_value(1e-320, ".1f") == "0.0" and format_value(None, ".1f", missing="-") == "-"


@pytest.mark.slow
def test_a_sweep_with_every_baseline_reply_unscored_and_a_subnormal_coefficient(tmp_path, capsys):
    """Issues 25/26: `sweep --coefficients=1e-320 --questions 1` ended in a TypeError at the baseline summary line
    (french on a random model: no word is recognised, so no reply is scored); every rerun too."""
    vector = _vector(tmp_path / "fr.safetensors", trait="french")
    argv = [
        "sweep",
        "--trait",
        "french",
        "--model",
        "tiny-llama",
        "--vector",
        vector,
        "--judge",
        "rule",
        "--coherence",
        "rule",
        "--coefficients=1e-320",
        "--questions",
        "1",
        "--layers",
        "1",
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        tmp_path / "sweep",
        "--quiet",
        "--judge-cache",
        tmp_path / "j.sqlite",
    ]
    for _ in range(2):
        code = main([str(a) for a in argv])
        out = capsys.readouterr().out
        assert code == 0
        assert "baseline (unsteered): trait n/a, rate n/a" in out and "replies unscored" in out


# --- item 7: smaller ---------------------------------------------------------------------------------------------


def test_finetune_files_follow_the_umask(tmp_path):
    """Old main: model.safetensors and trainer_state/trainable.safetensors were 0600."""
    from persona_lens.experiments.finetune import _save_state, save_model

    model = load_cached("tiny-llama")
    old = os.umask(0o022)
    try:
        save_model(model, tmp_path / "model", {"note": "test"})
        parameter = torch.nn.Parameter(torch.ones(2))
        _save_state(
            tmp_path / "model" / "trainer_state", {"w": parameter}, torch.optim.SGD([parameter], lr=0.1), {"step": 1}
        )
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "model").rglob("*") if p.is_file()]
    assert tmp_path / "model" / "model.safetensors" in written
    assert tmp_path / "model" / "trainer_state" / "trainable.safetensors" in written
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: "0o644" for p in written}


@pytest.mark.slow
def test_a_reply_with_leading_spaces_or_a_blank_line_says_what_was_found(smollm2):
    """Old main blamed the chat template ("renders the prompt differently alone and inside the full
    conversation") for a reply starting with two spaces or a blank line."""
    from persona_lens.core.chat import TemplateBoundaryError, encode_conversation, make_messages

    for reply, found in (("  Arr matey", "'  ' (2 spaces)"), ("\n\nArr matey", "'\\n\\n' (a blank line)")):
        with pytest.raises(TemplateBoundaryError) as error:
            encode_conversation(smollm2.tokenizer, make_messages("hi"), reply)
        assert f"the reply starts with {found}" in str(error.value), str(error.value)
        assert "remove the leading whitespace" in str(error.value)


def test_ray_options_are_validated_and_a_gpu_that_is_not_there_is_refused_before_starting(tmp_path, capsys):
    """Old main: `--ray-cpus nan` started Ray, then failed naming no option; `--ray-gpus 1` without a GPU waited
    forever with no word."""
    common = ["extract", "pirate", "--model", NO_MODEL, "--out", tmp_path / "o", "--ray"]
    code, err = run_cli([*common, "--ray-cpus", "nan"], capsys)
    assert code == 2 and "--ray-cpus must be a finite number" in err
    code, err = run_cli([*common, "--ray-workers", "0"], capsys)
    assert code == 2 and "--ray-workers must be >= 1" in err
    code, err = run_cli([*common, "--ray-gpus", "-1"], capsys)
    assert code == 2 and "--ray-gpus must be >= 0" in err
    if torch.cuda.device_count() == 0:
        code, err = run_cli([*common, "--ray-gpus", "1"], capsys)
        assert code == 2 and "--ray-gpus 1" in err and "0 GPUs" in err


@pytest.mark.slow
def test_a_ray_cluster_asked_for_what_it_lacks_says_so_at_once(tmp_path):
    pytest.importorskip("ray")
    script = (
        "import ray, time\n"
        "from persona_lens.experiments.executor import RayExecutor\n"
        "ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    RayExecutor('tiny-llama', address='auto', num_gpus=1).start()\n"
        "except ValueError as error:\n"
        "    print('REFUSED', round(time.monotonic() - started, 1), error)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "REFUSED" in done.stdout, done.stderr[-2000:]
    assert "0 GPUs and 1 CPUs" in done.stdout and "wait forever" in done.stdout


def test_ray_client_is_installed_by_the_scale_extra():
    """`--ray ray://HOST:PORT` is documented; it needs ray[client] (grpcio), which the setup now installs."""
    import importlib.util

    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("ray[client]") for requirement in extras["scale"])
    pytest.importorskip("ray")
    assert importlib.util.find_spec("grpc") is not None


@pytest.mark.parametrize(
    "engine, message",
    [
        ("vllm+http://localhost", "names no port"),  # was 4 tries at port 80 after the run started
        ("vllm+ftp://localhost:8000", "not an http(s) URL with a host"),  # was 4 tries of an ftp URL
        ("vllm+http://:8000", "not an http(s) URL with a host"),
        ("vllm+http://localhost:99999", "Port out of range"),
        ("vllm+", "not an http(s) URL with a host"),  # was "error: unknown url type: '/v1/models'"
        ("vllm+http://[::1", "Invalid IPv6 URL"),  # was "error: Invalid IPv6 URL", no option named
        ("localhost:8000", "not an http(s) URL with a host"),  # was 4 tries of "unknown url type: localhost"
        ("", "not an http(s) URL with a host"),
    ],
)
def test_a_malformed_engine_url_is_refused_before_any_model_or_request(capsys, engine, message):
    code, err = run_cli(["sweep", "--model", NO_MODEL, "--trait", "pirate", "--engine", engine], capsys)
    assert code == 2 and "argument --engine" in err and message in err, err
    assert NO_MODEL not in err.splitlines()[-1]


def test_well_formed_engine_urls_pass_the_check():
    from persona_lens.cli.scale import engine_arg

    for url in (
        "http://127.0.0.1:8000",
        "https://host.example/v1",
        "vllm+http://127.0.0.1:8000",
        " vllm+https://h:1/v1",
    ):
        assert engine_arg(url) == url.strip()
