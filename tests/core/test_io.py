import json
import os
import sqlite3

import pytest

from persona_lens.core.io import JsonlRecords, SqliteStore, atomic_directory, check_settings


def test_append_and_load(tmp_path):
    store = JsonlRecords(tmp_path / "r.jsonl")
    assert store.load() == {}
    store.append([{"key": "a", "x": 1}, {"key": "b", "x": 2}])
    store.append([{"key": "a", "x": 3}])  # a later record with the same key wins
    assert store.load() == {"a": {"key": "a", "x": 3}, "b": {"key": "b", "x": 2}}


def test_a_torn_last_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    store = JsonlRecords(path)
    store.append([{"key": "a"}])
    with path.open("a") as handle:
        handle.write('{"key": "b", "tru')  # killed mid-write
    assert list(store.load()) == ["a"]
    store.append([{"key": "c"}])
    assert list(store.load()) == ["a", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


@pytest.mark.parametrize("text", ["Très bien, merci", "Great job 👍"])
def test_a_last_line_cut_inside_a_multibyte_character_is_torn_not_fatal(tmp_path, text):
    path = tmp_path / "r.jsonl"
    store = JsonlRecords(path)
    store.append([{"key": "a", "reply": text}])
    line = (json.dumps({"key": "b", "reply": text}, ensure_ascii=False) + "\n").encode("utf-8")
    cut = line.index(text[-1].encode("utf-8") if not text.endswith("merci") else "è".encode()) + 1
    with path.open("ab") as handle:
        handle.write(line[:cut])  # killed in the middle of a two- or four-byte UTF-8 character
    with pytest.raises(UnicodeDecodeError):
        path.read_text(encoding="utf-8")
    assert JsonlRecords(path).load() == {"a": {"key": "a", "reply": text}}
    JsonlRecords(path).append([{"key": "c", "reply": text}])
    again = JsonlRecords(path).load()
    assert list(again) == ["a", "c"] and again["c"]["reply"] == text
    assert [json.loads(line)["key"] for line in path.read_text(encoding="utf-8").splitlines()] == ["a", "c"]


def test_rows_give_byte_offsets_and_garbage_at_the_end_is_a_torn_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    store = JsonlRecords(path)
    store.append([{"key": "é"}, {"key": "b"}])
    with path.open("ab") as handle:
        handle.write(b'\x00\x00\x00\n\n{"key": "torn')  # what a crash can leave
    data = path.read_bytes()
    assert [(row["key"], data[offset:].startswith(b'{"key": "b"}')) for row, offset in store.rows()] == [
        ("é", False),
        ("b", True),
    ]
    assert store.drop_torn_tail() == len(b'\x00\x00\x00\n\n{"key": "torn')
    assert path.read_bytes() == data[: data.index(b"\x00")]


def test_a_damaged_line_followed_by_records_is_an_error_not_a_tail(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": oops}\n{"key": "c"}\n')
    with pytest.raises(ValueError, match="line 2"):
        JsonlRecords(path).load()
    with pytest.raises(ValueError, match="damaged"):
        JsonlRecords(path).append([{"key": "d"}])
    assert path.read_bytes() == b'{"key": "a"}\n{"key": oops}\n{"key": "c"}\n'  # nothing cut


def test_sqlite_store(tmp_path):
    path = tmp_path / "c.sqlite"
    store = SqliteStore(path, "things", {"a": "TEXT NOT NULL", "b": "INTEGER NOT NULL"}, {"value": "TEXT"})
    assert store.get_many([("x", 1)]) == {} and store.count() == 0
    store.put_many({("x", 1): ("one",), ("x", 2): (None,)})
    store.put_many({("x", 1): ("uno",)})
    again = SqliteStore(path, "things", {"a": "TEXT NOT NULL", "b": "INTEGER NOT NULL"}, {"value": "TEXT"})
    assert again.get_many([("x", 1), ("x", 2), ("y", 1), ("x", 1)]) == {("x", 1): ("uno",), ("x", 2): (None,)}
    assert again.count() == 2
    single = SqliteStore(path, "other", {"key": "TEXT NOT NULL"}, {"n": "INTEGER"})
    single.put_many({"k": (3,)})
    assert single.get_many(["k", "missing"]) == {"k": (3,)}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_atomic_directory_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "state"
    with atomic_directory(target) as scratch:
        (scratch / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"] and (target / "a").read_text() == "1"
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~_umask()
    with pytest.raises(RuntimeError), atomic_directory(target) as scratch:
        (scratch / "b").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"] and sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    with atomic_directory(target) as scratch:
        (scratch / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with atomic_directory(target, merge=True) as scratch:
        (scratch / "c").write_text("3")
        (scratch / "b").write_text("22")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"b": "22", "c": "3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_settings_are_recorded_then_enforced(tmp_path):
    path = tmp_path / "run" / "settings.json"
    check_settings(path, {"temperature": 1.0}, what="replies")
    check_settings(path, {"temperature": 1.0}, what="replies")
    with pytest.raises(ValueError, match=r"temperature: 1\.0 -> 0\.5"):
        check_settings(path, {"temperature": 0.5}, what="replies")
