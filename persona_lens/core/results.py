"""Result folders: each experiment's result writes every file of its run with ``save(folder)`` and reads them back
with ``load(folder)``; the figures are then drawn from the loaded result, without the model.

Writes go through :mod:`persona_lens.core.io` (atomic); reads go through :func:`read_json` and :func:`read_csv`,
which raise :class:`ResultFileError` naming the file and the fix instead of a bare ``FileNotFoundError``,
``UnicodeDecodeError`` or ``JSONDecodeError``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from persona_lens.core.errors import Error
from persona_lens.core.io import atomic_output

__all__ = ["ResultFileError", "read_text", "read_json", "read_csv", "write_csv", "slug"]


class ResultFileError(Error, ValueError):
    """A file of a result folder is missing or unreadable: the message names the file and the fix."""


def read_text(path: str | os.PathLike[str], what: str = "this file") -> str:
    """The UTF-8 text of ``path``; :class:`ResultFileError` (naming the file) if it is missing or not UTF-8."""
    target = Path(path)
    try:
        return target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileError(
            f"{target}: no such file; {what} is written by the command's run into its --out "
            "folder: give that folder, or rerun the command"
        ) from None
    except IsADirectoryError:
        raise ResultFileError(f"{target} is a folder; give the result folder that holds it") from None
    except UnicodeDecodeError as error:
        raise ResultFileError(
            f"{target} is not UTF-8 text ({error.reason} at byte {error.start}); it is not a file "
            "persona_lens wrote: rerun the command"
        ) from None


def read_json(path: str | os.PathLike[str], what: str = "this file") -> Any:
    """The JSON content of ``path``; :class:`ResultFileError` (naming the file) if it is missing or malformed."""
    target = Path(path)
    text = read_text(target, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultFileError(
            f"{target} is not valid JSON (line {error.lineno}: {error.msg}); it was cut short or "
            "edited: rerun the command"
        ) from None


def read_csv(path: str | os.PathLike[str], what: str = "this file") -> list[dict[str, str]]:
    """The rows of the CSV file ``path`` as dicts keyed by its header."""
    target = Path(path)
    return list(csv.DictReader(io.StringIO(read_text(target, what), newline="")))


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write ``header`` and ``rows`` to the CSV file ``path`` atomically (UTF-8)."""
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def slug(text: str) -> str:
    """``text`` as a file-name part of a result folder: runs of anything but ``A-Za-z0-9._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "model"
