"""CachedJudge: a rerun costs zero requests; refusals are cached, transport failures are not."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import threading

import pytest

from persona_lens.judges.cache import CachedJudge, DetailedJudge, Verdict, verdicts_of
from persona_lens.judges.claude import ClaudeJudge
from persona_lens.judges.rule import RuleJudge
from tests.fake_anthropic import FakeAnthropic, Fault, request_text

RUBRIC = "Rate the answer.\nQuestion: {question}\nAnswer: {answer}\nA number 0-100, or REFUSAL."
OTHER_RUBRIC = "Rate the answer differently.\nQuestion: {question}\nAnswer: {answer}\nA number 0-100."


def reply(request: dict) -> str | Fault:
    text = request_text(request)
    if "network-trouble" in text:
        return Fault.server_error()
    if "refuse" in text:
        return "REFUSAL"
    if "ramble" in text:
        return "Well, it depends on many things"
    match = re.search(r"score=(\d+)", text)
    return match.group(1) if match else "50"


@pytest.fixture
def server():
    with FakeAnthropic(reply) as fake:
        yield fake


def claude(server: FakeAnthropic, model: str = "claude-haiku-4-5") -> ClaudeJudge:
    return ClaudeJudge(model, base_url=server.url, api_key="test", max_retries=1, retry_base_delay=0.001)


ITEMS = [("q1", "score=10"), ("q2", "score=20"), ("q3", "please refuse"), ("q4", "ramble on"), ("q5", "score=50")]


def test_rerun_costs_zero_requests(server, tmp_path):
    path = tmp_path / "scores.sqlite"
    first = CachedJudge(claude(server), path)
    assert first.judge_id == "claude:claude-haiku-4-5"
    assert first.score(RUBRIC, ITEMS) == [10.0, 20.0, None, None, 50.0]
    assert server.counts["messages"] == 5
    assert (first.stats.hits, first.stats.misses, first.stats.writes) == (0, 5, 5)

    again = CachedJudge(claude(server), path)  # a new process would see the same file
    verdicts = again.score_detailed(RUBRIC, ITEMS)
    assert [v.score for v in verdicts] == [10.0, 20.0, None, None, 50.0]
    assert verdicts[2].reason == "refusal" and "no number" in verdicts[3].reason
    assert server.counts["messages"] == 5  # nothing new was asked
    assert (again.stats.hits, again.stats.misses) == (5, 0)


def test_only_misses_reach_the_judge(server, tmp_path):
    judge = CachedJudge(claude(server), tmp_path / "c.sqlite")
    judge.score(RUBRIC, ITEMS[:2])
    assert judge.score(RUBRIC, ITEMS[:3] + [ITEMS[0]]) == [10.0, 20.0, None, 10.0]
    assert server.counts["messages"] == 3
    asked = [b["messages"][0]["content"] for b in server.bodies()]
    assert sum("please refuse" in text for text in asked) == 1


def test_key_includes_judge_and_rubric(server, tmp_path):
    path = tmp_path / "c.sqlite"
    CachedJudge(claude(server), path).score(RUBRIC, ITEMS[:1])
    CachedJudge(claude(server), path).score(OTHER_RUBRIC, ITEMS[:1])
    CachedJudge(claude(server, model="claude-sonnet-4-5"), path).score(RUBRIC, ITEMS[:1])
    assert server.counts["messages"] == 3
    assert CachedJudge(claude(server), path).cached_rows() == 3


def test_transport_failures_are_not_cached(server, tmp_path):
    path = tmp_path / "c.sqlite"
    items = [("q1", "score=10"), ("q2", "network-trouble")]
    judge = CachedJudge(claude(server), path)
    verdicts = judge.score_detailed(RUBRIC, items)
    assert verdicts[0] == Verdict(10.0, "", True)
    assert verdicts[1].score is None and not verdicts[1].cacheable
    assert server.counts["messages"] == 1 + 2  # max_retries=1: two tries for the failing item
    assert judge.stats.writes == 1

    server.set_reply(lambda request: "77")  # the network is back
    assert CachedJudge(claude(server), path).score(RUBRIC, items) == [10.0, 77.0]
    assert server.counts["messages"] == 4


class ScoresOnly:
    """A judge with only ``score`` (no reasons): its Nones cannot be told from failures."""

    judge_id = "scores-only:shouting"

    def score(self, rubric, items):
        return RuleJudge("shouting").score(rubric, items)


def test_rule_verdicts_are_final_so_their_nones_are_cached(tmp_path):
    items = [("q", "HELLO"), ("q", "1234")]
    first = CachedJudge(RuleJudge("shouting"), tmp_path / "rule.sqlite")
    assert first.score("{question} {answer}", items) == [100.0, None]
    again = CachedJudge(RuleJudge("shouting"), tmp_path / "rule.sqlite")
    assert again.score("{question} {answer}", items) == [100.0, None]
    assert (again.stats.hits, again.stats.misses) == (2, 0)


def test_judge_without_details_caches_numbers_only(tmp_path):
    rule = ScoresOnly()
    assert not isinstance(rule, DetailedJudge)
    items = [("q", "HELLO THERE"), ("q", "hello"), ("q", "1234")]
    judge = CachedJudge(rule, tmp_path / "rule.sqlite")
    assert judge.score("{question} {answer}", items) == [100.0, 0.0, None]
    assert verdicts_of(rule, "{question} {answer}", items)[2].cacheable is False
    assert judge.stats.writes == 2
    again = CachedJudge(rule, tmp_path / "rule.sqlite")
    assert again.score("{question} {answer}", items) == [100.0, 0.0, None]
    assert (again.stats.hits, again.stats.misses) == (2, 1)


def test_wal_mode_and_schema(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedJudge(RuleJudge("shouting"), path).score("{question}{answer}", [("q", "ABC")])
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (row,) = db.execute("SELECT judge_id, question, answer, score FROM scores").fetchall()
    assert row == ("rule:shouting", "q", "ABC", 100.0)


def test_rejects_a_rubric_without_slots(tmp_path):
    with pytest.raises(ValueError, match="slot"):
        CachedJudge(RuleJudge("shouting"), tmp_path / "c.sqlite").score("no slots", [("q", "a")])


def _score_in_process(path: str, start: int, queue) -> None:
    judge = CachedJudge(RuleJudge("shouting"), path)
    items = [("q", "A" * (i % 7 + 1) + "b" * (i % 3)) for i in range(start, start + 60)]
    queue.put(judge.score("{question}{answer}", items))


def test_concurrent_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_score_in_process, args=(path, start, queue)) for start in (0, 20, 40, 60)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert all(len(r) == 60 and all(s is not None for s in r) for r in results)
    assert CachedJudge(RuleJudge("shouting"), path).cached_rows() == len(
        {"A" * (i % 7 + 1) + "b" * (i % 3) for i in range(120)}
    )


def test_concurrent_threads(server, tmp_path):
    judge = CachedJudge(claude(server), tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def work():
        try:
            assert judge.score(RUBRIC, ITEMS) == [10.0, 20.0, None, None, 50.0]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert judge.cached_rows() == 5
