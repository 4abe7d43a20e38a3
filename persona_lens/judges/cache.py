"""A persistent SQLite cache in front of any judge, so rerunning an experiment costs no judge calls.

Keys are ``(judge_id, sha256(rubric), question, answer)``. A judge that can say *why* it gave no score implements
:class:`DetailedJudge` (``score_detailed`` returning :class:`Verdict` objects): then a refusal or a reply without a
number is cached as ``None``, while a transport failure (rate limit, timeout, server error) is not cached and is
asked again next time. For a judge without ``score_detailed`` only numeric scores are cached.

Several processes may share one cache file: it uses SQLite's WAL journal and waits on locks.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from persona_lens.core.io import SqliteStore
from persona_lens.judges.base import DetailedJudge, Judge, Score, Verdict, check_rubric, verdicts_of

__all__ = ["Verdict", "DetailedJudge", "CachedJudge", "CacheStats", "verdicts_of"]


@dataclass
class CacheStats:
    """Counts since the :class:`CachedJudge` was made."""

    hits: int = 0
    misses: int = 0
    writes: int = 0


_KEYS = {
    "judge_id": "TEXT NOT NULL",
    "rubric_sha256": "TEXT NOT NULL",
    "question": "TEXT NOT NULL",
    "answer": "TEXT NOT NULL",
}
_VALUES = {"score": "REAL", "reason": "TEXT NOT NULL DEFAULT ''", "created_at": "REAL NOT NULL"}


class CachedJudge:
    """Wraps ``judge`` with a SQLite cache at ``path``; same protocol, same ``judge_id``.

    Only cache misses go to the inner judge (each distinct item once). ``stats`` counts hits and misses.
    """

    def __init__(self, judge: Judge, path: str | Path, *, timeout: float = 60.0) -> None:
        self.judge = judge
        self.path = Path(path)
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()
        self._store = SqliteStore(self.path, "scores", _KEYS, _VALUES, timeout=timeout)

    @property
    def judge_id(self) -> str:
        return self.judge.judge_id

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        return [v.score for v in self.score_detailed(rubric, items)]

    def score_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        check_rubric(rubric)
        items = [(str(q), str(a)) for q, a in items]
        rubric_sha = hashlib.sha256(rubric.encode()).hexdigest()
        judge_id = self.judge_id
        found = self._lookup(judge_id, rubric_sha, set(items))
        missing = list(dict.fromkeys(item for item in items if item not in found))
        with self._stats_lock:
            self.stats.hits += len(items) - sum(1 for item in items if item not in found)
            self.stats.misses += sum(1 for item in items if item not in found)
        if missing:
            fresh = verdicts_of(self.judge, rubric, missing)
            if len(fresh) != len(missing):
                raise RuntimeError(f"judge {judge_id} returned {len(fresh)} verdicts for {len(missing)} items")
            self._store_verdicts(judge_id, rubric_sha, [(item, v) for item, v in zip(missing, fresh) if v.cacheable])
            found.update(zip(missing, fresh))
        return [found[item] for item in items]

    def _lookup(self, judge_id: str, rubric_sha: str, items: set[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
        rows = self._store.get_many((judge_id, rubric_sha, question, answer) for question, answer in items)
        return {key[2:]: Verdict(score, reason, True) for key, (score, reason, _) in rows.items()}

    def _store_verdicts(self, judge_id: str, rubric_sha: str, rows: list[tuple[tuple[str, str], Verdict]]) -> None:
        if not rows:
            return
        now = time.time()
        self._store.put_many({(judge_id, rubric_sha, q, a): (v.score, v.reason, now) for (q, a), v in rows})
        with self._stats_lock:
            self.stats.writes += len(rows)

    def cached_rows(self) -> int:
        """Rows in the cache file (all judges, all rubrics). Not ``__len__``: an empty cache must stay truthy."""
        return self._store.count()

    def __repr__(self) -> str:
        return f"CachedJudge({self.judge!r}, {str(self.path)!r})"
