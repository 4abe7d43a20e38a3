"""Issue 15: property-based tests (Hypothesis) over the file readers and the CLI's numeric options.

Whatever the input, a reader gives records or a clear error of its documented kind, and the CLI gives exit 0, or exit
2 with a message: never a traceback, never a NaN written to disk. The runs are bounded (few examples, no deadline)
so CI stays fast; CLI examples call ``main()`` in-process and stop before any model is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_lens.cli import main
from persona_lens.core import validate
from persona_lens.core.chat import BadRecord, ChatRecord, iter_chat_jsonl
from persona_lens.core.io import JsonlRecords
from persona_lens.core.vectors import PersonaVector, VectorFileError, encode_metadata, load_vector

BOUNDED = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REPO = Path(__file__).resolve().parents[1]
NO_MODEL = "no-such-model-loaded-before-the-check"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def run_cli(argv: list, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _assert_clean_refusal(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.strip()  # a message naming the problem


# --- trait files ----------------------------------------------------------------------------------------------------

_PIRATE = json.loads((REPO / "traits" / "pirate.json").read_text(encoding="utf-8"))


@BOUNDED
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_a_trait_file(tmp_path, capsys, raw):
    path = tmp_path / "t.json"
    path.write_bytes(raw)
    _assert_clean_refusal(*run_cli(["traits", "validate", path], capsys))


@BOUNDED
@given(field=st.sampled_from(sorted(_PIRATE)), value=json_values)
def test_a_trait_with_any_field_replaced(tmp_path, capsys, field, value):
    path = tmp_path / "pirate.json"
    path.write_text(json.dumps({**_PIRATE, field: value}), encoding="utf-8")
    _assert_clean_refusal(*run_cli(["traits", "validate", path], capsys))


# --- chat JSONL (datasets, prompts) --------------------------------------------------------------------------------


@BOUNDED
@given(lines=st.lists(st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6))
def test_any_lines_as_a_chat_dataset(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    records = list(iter_chat_jsonl(path))
    for record in records:
        assert isinstance(record, (ChatRecord, BadRecord)) and record.line >= 1
        if isinstance(record, BadRecord):
            assert record.problem


@BOUNDED
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_prompts_file(tmp_path, capsys, raw):
    for suffix in (".txt", ".jsonl"):
        path = tmp_path / f"p{suffix}"
        path.write_bytes(raw)
        code, err = run_cli(
            ["monitor", "project", "--vector", tmp_path / "v", "--layer", "1", "--prompts", path, "--model", NO_MODEL],
            capsys,
        )
        assert code == 2 and "Traceback" not in err and err.startswith("error: ")  # bad prompts or no such model


# --- vector files ------------------------------------------------------------------------------------------------


@BOUNDED
@given(raw=st.binary(max_size=400))
def test_any_bytes_as_a_vector_file(tmp_path, raw):
    path = tmp_path / "v.safetensors"
    path.write_bytes(raw)
    with pytest.raises(VectorFileError):
        load_vector(path)


@BOUNDED
@given(
    values=st.lists(st.floats(width=32), min_size=6, max_size=6),
    meta_key=st.sampled_from(["n_layers", "d_model", "positions", "settings", "format_version", "trait"]),
    meta_value=st.text(max_size=12),
    corrupt=st.booleans(),
)
def test_vector_files_never_load_or_export_non_finite_values(tmp_path, capsys, values, meta_key, meta_value, corrupt):
    tensor = torch.tensor(values, dtype=torch.float32).reshape(2, 3)
    meta = encode_metadata(PersonaVector("t", "tiny-llama", torch.zeros(2, 3), "response"))
    if corrupt:
        meta[meta_key] = meta_value
    path = tmp_path / "v.safetensors"
    safetensors.torch.save_file({"vectors": tensor}, str(path), metadata=meta)
    try:
        vec = load_vector(path)
    except VectorFileError:
        vec = None
    else:
        assert torch.isfinite(vec.vectors).all()
    assert vec is not None or corrupt or not all(math.isfinite(v) for v in values)
    out = tmp_path / "v.npz"
    code, err = run_cli(["export", path, "--format", "npz", "--out", out, "--force"], capsys)
    _assert_clean_refusal(code, err)
    if code == 0:
        assert np.isfinite(np.load(out)["vectors"]).all()


# --- run records (responses.jsonl) -------------------------------------------------------------------------------


@BOUNDED
@given(tail=st.binary(max_size=60), middle=st.booleans())
def test_any_damage_to_a_records_file(tmp_path, tail, middle):
    store = JsonlRecords(tmp_path / f"r{abs(hash((tail, middle)))}.jsonl")
    store.append([{"key": "a", "text": "é🥐"}, {"key": "b", "text": "ok"}])
    with store.path.open("ab") as handle:
        handle.write(tail)
        if middle:
            handle.write(b'\n{"key": "c"}\n')
    try:
        loaded = store.load()
    except ValueError as error:  # damage followed by records, or a record without its key: named, never guessed
        assert str(store.path) in str(error)
        return
    assert {"a", "b"} <= set(loaded)
    store.append([{"key": "d"}])  # the torn tail, if any, is cut; the file is whole UTF-8 JSON lines again
    assert set(store.load()) >= {"a", "b", "d"}
    for line in store.path.read_bytes().decode("utf-8").splitlines():
        assert not line.strip() or isinstance(json.loads(line), dict)


# --- the CLI's numeric options -------------------------------------------------------------------------------------

# (command line before the option, option, the API's check of the value, type)
OPTIONS = [
    (["extract", "pirate"], "--temperature", lambda v, n: validate.temperature(v, n), float),
    (["extract", "pirate"], "--trait-threshold", validate.score_threshold, float),
    (["extract", "pirate"], "--batch-size", validate.positive_int, int),
    (["extract", "pirate"], "--pairs", validate.positive_int, int),
    (["extract", "pirate"], "--seed", validate.non_negative_int, int),
    (["sweep"], "--coherence-threshold", validate.score_threshold, float),
    (["sweep"], "--max-new-tokens", validate.positive_int, int),
]

numbers = (
    st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.integers(-5, 5).map(str)
    | st.sampled_from(["nan", "inf", "-inf", "1e400", "1e308", "0", "-0", "True", "", "0x10", "1_0"])
    | st.text(max_size=6)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(OPTIONS), text=numbers)
def test_numeric_options_are_refused_or_accepted_exactly_as_the_api_does(tmp_path, capsys, option, text):
    prefix, flag, check, kind = option
    code, err = run_cli([*prefix, f"{flag}={text}", "--model", NO_MODEL, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "Traceback" not in err
    try:
        check(kind(text.strip()), flag)
        accepted = True
    except (ValueError, validate.BadValue):
        accepted = False
    if accepted:
        assert "cannot load model" in err, err  # past the option, stopped by the absent model
    else:
        assert f"argument {flag}" in err, err
    assert not (tmp_path / "run" / "settings.json").exists()
