"""Files that survive interruption: atomic writes, and append-only JSONL records keyed by ``"key"`` (what long jobs
write as they go, so an interrupted run resumes).

* :func:`atomic_output` / :func:`write_text_atomic` / :func:`write_json_atomic`: a file is either the old one or the
  whole new one, never half written; new files get the usual permissions (``0666 & ~umask``).
* :class:`JsonlRecords`: append-only records, fsynced; a torn last line is dropped.
* :func:`check_settings`: a run folder remembers the settings its results were made with.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["JsonlRecords", "atomic_output", "check_settings", "write_json_atomic", "write_text_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on error it vanishes.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0666 & ~umask``), not the private
    ``0600`` of a temporary file, so a server running as another user (llama-server, say) can read it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (non-ASCII kept as is)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False))


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
    write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True))
