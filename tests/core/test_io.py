import json

import pytest

from persona_lens.core.io import JsonlRecords, check_settings


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


def test_settings_are_recorded_then_enforced(tmp_path):
    path = tmp_path / "run" / "settings.json"
    check_settings(path, {"temperature": 1.0}, what="replies")
    check_settings(path, {"temperature": 1.0}, what="replies")
    with pytest.raises(ValueError, match=r"temperature: 1\.0 -> 0\.5"):
        check_settings(path, {"temperature": 0.5}, what="replies")
