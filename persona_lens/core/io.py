"""Append-only JSONL records keyed by ``"key"``: what long jobs write as they go, so an interrupted run resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["JsonlRecords", "check_settings"]


class JsonlRecords:
    """A JSONL file of dict records, each with a unique ``"key"``.

    Each append is flushed and fsynced, so a kill loses at most the line being written; a torn last line is ignored
    on load (and overwritten by the next append).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open("r", encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn write from an interrupted run
                line = line.strip()
                if line:
                    record = json.loads(line)
                    records[record["key"]] = record
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _drop_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            data = self.path.read_bytes()
            handle.truncate(data.rfind(b"\n") + 1)


def check_settings(path: str | Path, settings: dict[str, Any], *, what: str) -> None:
    """Record ``settings`` in ``path`` on first use; later, refuse to mix results made under other settings."""
    path = Path(path)
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{path.parent} holds {what} made with other settings ({details}); use another output folder "
                f"(--out) or delete {path.parent} to start over"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
