"""Issue 27 item 8: a property test driving every command's path options with regular files, folders, symbolic links
(to a file, to a folder, dangling), FIFOs, missing paths, empty and over-long names.

Whatever the path, the CLI gives exit 0 or exit 2 with a message (never a traceback, never a hang: an alarm turns
a read blocked on a FIFO into a failure), and nothing outside the run folder changes: every entry of the test's
arena (a link's target, a FIFO, the current folder) is the same before and after. Bounded (4 kinds of path per
command line, seeded, no deadline); CLI calls run in-process and stop at the path check or at the model that does
not exist.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from persona_lens.cli import main
from persona_lens.core.vectors import PersonaVector, save_vector

NO_MODEL = "no-such-model-loaded-before-the-check"
KINDS = [
    "regular",
    "folder",
    "link-to-file",
    "link-to-folder",
    "dangling-link",
    "fifo",
    "missing",
    "empty",
    "long-name",
    "long-path",
]

# (command line with {P}: the path driven, {V}: a valid vector, {O}: the run folder, {F}: a run file), is P an output
COMMANDS: list[tuple[str, bool]] = [
    ("extract pirate --model M --out {P}", True),
    ("sweep --trait pirate --model M --vector {V} --out {P}", True),
    ("sweep --trait pirate --model M --vector {P} --out {O}", False),
    ("export {V} --format npz --out {P} --force", True),
    ("export {V} --format gguf --out {P}", True),
    ("export {P} --format pt --out {F}", False),
    ("screen {P} --vector {V} --layer 1 --model M --out {O}", False),
    ("screen {F} --vector {V} --layer 1 --model M --out {P}", True),
    ("finetune --data {P} --model M --out {O}", False),
    ("finetune --data {F} --model M --out {P}", True),
    ("shift --finetuned M --vector {V} --layer 1 --model M --out {P}", True),
    ("monitor sweep --trait pirate --vector {V} --layer 1 --model M --out {P}", True),
    ("monitor tokens --vector {V} --layer 1 --model M --prompts {P} --out {F}", False),
    ("monitor tokens --vector {V} --layer 1 --model M --out {P}", True),
    ("space build --model M --out {P}", True),
    ("space cap --space {P} --layers 1 --out {F}", False),
    ("space cap --space {O} --layers 1 --out {P}", True),
    ("space drift --space {O} --model M --layer 1 --user-turns {P} --out {O}", False),
    ("space drift --space {O} --model M --layer 1 --conversation {P} --out {O}", False),
    ("space drift --space {O} --model M --layer 1 --user-turns {F} --out {P}", True),
    ("space cap-eval --cap {P} --model M --out {O}", False),
    ("space cap-eval --cap {F} --model M --out {P}", True),
    ("traits validate {P}", False),
    ("roles validate {P}", False),
    ("traits new pirate2 --description d --out {P}", True),
]


def _make(kind: str, arena: Path) -> str:
    """A path of ``kind`` inside ``arena`` (what a link points to is in the arena too, so it is watched)."""
    path = arena / "driven"
    if kind == "regular":
        path.write_bytes(b'{"not": "what any command expects"}\n')
    elif kind == "folder":
        path.mkdir()
    elif kind in ("link-to-file", "link-to-folder"):
        target = arena / ("target.txt" if kind == "link-to-file" else "target")
        target.write_text("keep me") if kind == "link-to-file" else target.mkdir()
        path.symlink_to(target)
    elif kind == "dangling-link":
        path.symlink_to(arena / "nowhere")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        return ""
    elif kind == "long-name":
        return str(arena / ("n" * 300))
    elif kind == "long-path":
        return str(arena / "/".join(["d" * 200] * 25))
    return str(path)


def _snapshot(arena: Path, allowed: Path | None) -> dict[str, tuple]:
    """Every entry under ``arena`` (links not followed) but those under ``allowed``: type, size, content of files."""
    seen = {}
    for root, dirs, files in os.walk(arena):
        for name in dirs + files:
            path = Path(root) / name
            if allowed is not None and (path == allowed or allowed in path.parents):
                continue
            info = os.lstat(path)
            content = (
                path.read_bytes()
                if stat.S_ISREG(info.st_mode)
                else os.readlink(path)
                if stat.S_ISLNK(info.st_mode)
                else None
            )
            seen[str(path.relative_to(arena))] = (stat.S_IFMT(info.st_mode), info.st_size, content)
    return seen


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang("the command blocked (a FIFO read?) for 60 s")


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[template.split(" {")[0] + f"-{i}" for i, (template, _) in enumerate(COMMANDS)]
)
@seed(27)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS))
def test_every_path_option_with_any_kind_of_path(tmp_path, capsys, monkeypatch, command, kind):
    arena = Path(tempfile.mkdtemp(dir=tmp_path))
    cwd = arena / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    vector = save_vector(PersonaVector("pirate", "tiny-llama", torch.ones(3, 4), "response"), arena / "v.safetensors")
    (arena / "data.jsonl").write_text("")
    driven = _make(kind, arena)
    template, is_output = command
    out_folder = arena / "run"
    argv = [
        part.format(P=driven, V=vector, O=out_folder, F=arena / "data.jsonl") if "{" in part else part
        for part in template.replace(" M ", f" {NO_MODEL} ").split(" ")
    ]
    # what the command may write: the run folder (or file) it is given, made or replaced in place; never what a link
    # points to, a FIFO, the current folder or any input
    allowed = (Path(driven) if kind in ("folder", "missing", "regular") else None) if is_output else out_folder
    before = _snapshot(arena, allowed)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refusals
        code = exit_.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip()
    after = _snapshot(arena, allowed)
    assert after == before, (argv, set(after.items()) ^ set(before.items()))
