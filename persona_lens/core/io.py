"""Files that survive interruption: atomic writes, append-only JSONL records and a shared SQLite table (what long
jobs write as they go, so an interrupted run resumes).

* :func:`atomic_output` / :func:`write_text_atomic` / :func:`write_json_atomic`: a file is either the old one or the
  whole new one, never half written; new files get the usual permissions (``0666 & ~umask``).
  :func:`atomic_directory` does the same for a whole folder.
* :class:`JsonlRecords`: append-only records, fsynced; a torn tail (an append cut short) is ignored and cut off.
* :class:`SqliteStore`: rows under a key in a SQLite table that processes and threads share (caches).
* :func:`check_settings`: a run folder remembers the settings its results were made with.
* :class:`FolderLock`: one run at a time in a folder; the lock dies with its process (no stale lock to clear).
* :func:`read_text`: the one reader of the text files a command is pointed at (UTF-8, named by line when it is
  not; a folder or a missing file named), :class:`UnreadableFile`.
* :func:`check_output_path`: the one check every writer makes first: what sits at an output path must be a regular
  file or a folder (never a device, FIFO, socket or symbolic link, which a rename would replace or a write would
  follow); :class:`UnsafeOutput` names the path and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_lens.core.errors import Error

__all__ = [
    "FolderLock",
    "FolderBusy",
    "JsonlRecords",
    "SqliteStore",
    "UnsafeOutput",
    "atomic_directory",
    "check_output_path",
    "atomic_output",
    "check_settings",
    "read_text",
    "UnreadableFile",
    "write_json_atomic",
    "write_text_atomic",
]

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The longest path the kernel takes (Linux ``PATH_MAX``, terminating NUL included) and the longest name in a folder.
PATH_MAX = 4096
NAME_MAX = 255


class UnsafeOutput(Error, ValueError):
    """An output path we must not write: empty, too long, or something other than a regular file or a folder is
    there (a device, a FIFO, a socket, a symbolic link). The message names the path and the fix."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_output_path(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """``path`` as a Path if a writer may create or replace it; else :class:`UnsafeOutput` naming the path and the fix.

    Refused: an empty path (it would write into the current folder), a path longer than :data:`PATH_MAX` bytes or
    with a name longer than :data:`NAME_MAX`, and anything at ``path`` that is not a regular file (``folder``: a
    folder): a device node, FIFO or socket (an atomic rename would replace ``/dev/null`` itself; a write to a FIFO
    blocks), and a symbolic link (a write would follow it out of the run folder), whatever it points to. The
    folders above ``path`` may be links (a home folder often is); what is at ``path`` itself may not.
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise UnsafeOutput("the output path is empty; give a file or folder name (for the current folder, '.')")
    target = Path(text)
    encoded = os.fsencode(os.path.abspath(target))
    if len(encoded) >= PATH_MAX:
        raise UnsafeOutput(
            f"the output path {str(target)[:60]}... is {len(encoded)} bytes long, more than the "
            f"{PATH_MAX - 1} a path may have; choose a shorter path"
        )
    for part in target.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UnsafeOutput(
                f"the output path {str(target)[:60]}... has a name ({part[:40]!r}...) longer than "
                f"{NAME_MAX} bytes, more than a file system allows; choose a shorter name"
            )
    try:
        mode = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file above it: making the folder will say so)
        return target
    except OSError as error:  # EACCES, ELOOP, ...
        raise UnsafeOutput(f"cannot check the output path {target}: {error.strerror}; choose another path") from None
    if stat.S_ISREG(mode) and not folder:
        return target
    if stat.S_ISDIR(mode) and folder:
        return target
    if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and folder):
        want, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise UnsafeOutput(f"{target} is {found}, where {want} is written; choose another path")
    raise UnsafeOutput(
        f"{target} is {_kind(mode)}, not a {'folder' if folder else 'regular file'}; persona_lens "
        "never writes through or over one (it would replace or follow it): remove it or choose another "
        "path"
    )


class UnreadableFile(Error, ValueError):
    """A file a command was pointed at that cannot be read as text; the message names the file (and line), the fix."""


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The UTF-8 text of ``path``, or :class:`UnreadableFile` naming it: missing, a folder (or other non-file), or
    not UTF-8 (named by line and byte, as the JSONL readers do)."""
    source = Path(path)
    if not source.exists():
        raise UnreadableFile(f"{what}: no file at {source}; check the path")
    if not source.is_file():
        raise UnreadableFile(
            f"{what}: {source} is {'a folder' if source.is_dir() else 'not a regular file'}; give the path of a file"
        )
    data = source.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1)
        raise UnreadableFile(
            f"{what}: {source}:{line}: not UTF-8 text (byte {column} of the line); save the file as UTF-8"
        ) from None


def _open_no_follow(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_NOFOLLOW)`` after :func:`check_output_path`: a symbolic link at ``path`` (also one
    put there between the check and the open) is refused, never followed."""
    check_output_path(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o666 & ~_umask())
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeOutput(f"{path} is a symbolic link; persona_lens never writes through one: remove it") from None
        raise


def _follow_umask(folder: Path) -> None:
    """Give every file under ``folder`` the permissions ``open()`` would (``0666 & ~umask``) and every folder those of
    ``mkdir`` (``0777 & ~umask``): libraries that write 0600 (safetensors' ``save_file``) are made to agree."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask, follow_symlinks=False)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~mask | (os.stat(file).st_mode & 0o111 & ~mask))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically, on error it vanishes.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0666 & ~umask``), not the private
    ``0600`` of a temporary file, so a server running as another user (llama-server, say) can read it.
    """
    target = check_output_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        check_output_path(target)  # again: something may have been put there while we wrote
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(
    path: str | os.PathLike[str], data: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (non-ASCII kept as is; ``default`` as in :func:`json.dumps`)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, default=default))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, merge: bool = False) -> Iterator[Path]:
    """Yield an empty scratch folder next to ``path``; on success it replaces the folder ``path`` (if any) as a
    whole, on error it vanishes. The folder gets the permissions of a plain ``mkdir`` (``0777 & ~umask``).

    The old folder is moved aside, the new one moved in, then the old one deleted: a kill between the two moves
    leaves no folder at ``path`` (the old one is at ``.<name>.old``), never a mix of both. With ``merge``, the items of
    the scratch folder instead replace their namesakes in ``path`` one by one (each atomically), and the other items
    of ``path`` stay.
    """
    target = check_output_path(path, folder=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        yield scratch
        _follow_umask(scratch)
        check_output_path(target, folder=True)
        if merge:
            target.mkdir(exist_ok=True)
            for item in scratch.iterdir():
                check_output_path(target / item.name, folder=item.is_dir())
                os.replace(item, target / item.name)
        else:
            os.chmod(scratch, 0o777 & ~_umask())
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.replace(target, old)
            os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not merge:
        shutil.rmtree(old, ignore_errors=True)


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """The JSON object on one complete line, or None if it is not one (not UTF-8, not JSON, not an object)."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, absurdly nested JSON
        return None
    return record if isinstance(record, dict) else None


class JsonlRecords:
    """An append-only JSONL file of records (JSON objects), one a line, that survives interruption.

    Each append is flushed and fsynced, so a kill loses at most the lines being written. What a kill leaves is a
    *torn tail*: a last line without its newline, cut anywhere (also inside a multi-byte UTF-8 character of a
    French or emoji reply), or lines of garbage at the end. Everything is read as bytes: from the first line that
    is not a complete JSON object, to the end of the file, is the torn tail, provided no readable record follows;
    readers stop before it and the next append cuts it off (with a warning). An unreadable line *followed by*
    readable records is no interruption but a damaged file: reading it raises a ValueError naming the line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._clean_size: int | None = None  # the file's size after our last complete append: no tail to check

    def _lines(self) -> Iterator[tuple[dict[str, Any] | None, int, int]]:
        """``(record, start, end)`` byte range of each complete line before the torn tail (None: a blank line)."""
        if not os.path.lexists(self.path):
            return
        check_output_path(self.path)  # a link or FIFO where our records belong: refused, never followed
        with self.path.open("rb") as handle:
            start = 0
            torn_at: tuple[int, int] | None = None  # (line number, byte) where an unreadable line began
            for number, raw in enumerate(handle, start=1):
                end = start + len(raw)
                blank = not raw.strip()
                record = None if blank else _parse_line(raw) if raw.endswith(b"\n") else None
                if torn_at is None and not blank and record is None:
                    torn_at = (number, start)
                elif torn_at is not None and record is not None:
                    raise ValueError(
                        f"{self.path}: line {torn_at[0]} (byte {torn_at[1]}) is not a JSON record, but "
                        f"records follow it (line {number}): the file is damaged; repair or delete it"
                    )
                elif torn_at is None:
                    yield record, start, end
                start = end

    def rows(self) -> Iterator[tuple[dict[str, Any], int]]:
        """Each record, in file order, with the byte offset of its line; streamed (the torn tail is left out)."""
        for record, start, _ in self._lines():
            if record is not None:
                yield record, start

    def load(
        self, key: str = "key", *, check: Callable[[dict[str, Any]], str | None] | None = None
    ) -> dict[Any, dict[str, Any]]:
        """Every record by its ``key`` field; of records with the same key, the last one wins. A record without the
        field (or with one that is not a string or number) is a damaged file: a ValueError names its byte.
        ``check(record)`` returns what is wrong with a record (a field of the wrong type or range, say) or None; a
        problem is a ValueError naming the file, the line and the problem (a record edited by hand)."""
        records: dict[Any, dict[str, Any]] = {}  # keyed by the field's value: a string or a number
        for record, start in self.rows():
            value = record.get(key)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(
                    f"{self.path}: the record at byte {start} has no {key!r} field (a string): the file "
                    "is damaged or was not written by persona_lens; repair or delete it"
                )
            problem = None if check is None else check(record)
            if problem is not None:
                line = self._line_at(start)
                raise ValueError(
                    f"{self.path}:{line}: {problem}; the record was not written so by persona_lens "
                    "(edited by hand?): repair or delete that line to have it made again"
                )
            records[value] = record
        return records

    def _line_at(self, offset: int) -> int:
        """The line number (from 1) of the line starting at byte ``offset``."""
        with self.path.open("rb") as handle:
            return handle.read(offset).count(b"\n") + 1

    def drop_torn_tail(self) -> int:
        """Cut the torn tail off the file (see the class); returns how many bytes were dropped."""
        if not self.path.exists():
            return 0
        valid = 0
        for _, _, end in self._lines():
            valid = end
        dropped = self.path.stat().st_size - valid
        if dropped:
            log.warning(
                "%s: dropping a torn tail of %d bytes after byte %d (a write cut short by an interruption)",
                self.path,
                dropped,
                valid,
            )
            with os.fdopen(_open_no_follow(self.path, os.O_RDWR), "rb+") as handle:
                handle.truncate(valid)
                os.fsync(handle.fileno())
        return dropped

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` (one JSON line each, non-ASCII kept as is), after cutting any torn tail off."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_output_path(self.path)
        if not self.path.exists() or self.path.stat().st_size != self._clean_size:
            self.drop_torn_tail()
        self._clean_size = None  # until this append is complete
        with os.fdopen(_open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self._clean_size = handle.tell()


class SqliteStore:
    """Rows of one table of a SQLite file, each under a key of one or more columns: a persistent cache.

    Several processes and threads may share the file: it uses SQLite's WAL journal, every call opens its own
    connection, and a writer waits up to ``timeout`` seconds for a lock. ``keys`` and ``values`` map column names to
    their SQL declarations (names and declarations come from code, never from data); the table is created if
    missing. Keys and values are tuples in column order; a single-column key may be given bare.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str,
        keys: Mapping[str, str],
        values: Mapping[str, str],
        *,
        timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.table = table
        self.keys = list(keys)
        self.values = list(values)
        self.timeout = timeout
        check_output_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = ", ".join(f"{name} {decl}" for name, decl in {**keys, **values}.items())
        with contextlib.closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY ({', '.join(self.keys)}))")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout)
        db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return db

    def _key(self, key: Any) -> tuple[Any, ...]:
        return key if isinstance(key, tuple) else (key,)

    def get_many(self, keys: Iterable[Any]) -> dict[Any, tuple[Any, ...]]:
        """The stored values of those ``keys`` that are present, by key (as given)."""
        query = f"SELECT {', '.join(self.values)} FROM {self.table} WHERE " + " AND ".join(
            f"{name} = ?" for name in self.keys
        )
        found: dict[Any, tuple[Any, ...]] = {}
        unique = list(dict.fromkeys(keys))
        if not unique:
            return found
        with contextlib.closing(self._connect()) as db:
            for key in unique:
                row = db.execute(query, self._key(key)).fetchone()
                if row is not None:
                    found[key] = tuple(row)
        return found

    def put_many(self, rows: Mapping[Any, Sequence[Any]]) -> None:
        """Store ``{key: values}`` (replacing what those keys held), in one transaction."""
        if not rows:
            return
        columns = [*self.keys, *self.values]
        with contextlib.closing(self._connect()) as db, db:
            db.executemany(
                f"INSERT OR REPLACE INTO {self.table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [(*self._key(key), *values) for key, values in rows.items()],
            )

    def count(self) -> int:
        """Rows in the table."""
        with contextlib.closing(self._connect()) as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])


_UNRECORDED = object()


def check_settings(path: str | Path, settings: dict[str, Any], *, what: str) -> None:
    """Record ``settings`` in ``path`` on first use; later, refuse to mix results made under other settings."""
    path = check_output_path(path)
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:
            raise ValueError(
                f"{path} is not the JSON object of settings a run writes ({error}); delete {path.parent} to start over"
            ) from None
        if not isinstance(previous, dict):
            raise ValueError(
                f"{path} is not the JSON object of settings a run writes; delete {path.parent} to start over"
            )
        changed = {
            k: (previous.get(k, _UNRECORDED), v) for k, v in settings.items() if previous.get(k, _UNRECORDED) != v
        }
        if changed:
            details = ", ".join(
                f"{k}: {'(not recorded)' if old is _UNRECORDED else repr(old)} -> {new!r}"
                for k, (old, new) in changed.items()
            )
            raise ValueError(
                f"{path.parent} holds {what} made with other settings ({details}); use another output folder "
                f"(--out) or delete {path.parent} to start over"
            )
        return
    write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


class FolderBusy(Error, RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """An exclusive lock on a run folder, so two runs never write the same results at once.

    It is an advisory ``flock`` on ``<folder>/.persona_lens.lock`` (which holds the owner's pid, for the message):
    the kernel releases it when its process ends, however it ends (SIGKILL included), so a killed run never leaves a
    lock that blocks the next one. :meth:`acquire` does not wait: it raises :class:`FolderBusy`. Use it as a
    context manager or call :meth:`acquire` / :meth:`release`.
    """

    NAME = ".persona_lens.lock"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        check_output_path(self.folder, folder=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = _open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(
                    f"{self.folder} is in use by another run (pid {owner}); wait for it to finish, or "
                    "use another output folder (--out)"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
