"""The shared generate -> judge -> average loop: seeds, grouping of generate calls, None-aware summaries."""

import zlib

import pytest
import torch

import persona_lens.experiments.evaluate as E
from persona_lens.core.io import JsonlRecords
from persona_lens.experiments.extract import ExtractConfig
from persona_lens.experiments.steering_sweep import SteeringSweepConfig
from persona_lens.judges.rule import RuleJudge


def test_job_seed_is_the_resumable_formula():
    assert E.job_seed(7, "pos|p0|q1|s2") == (7 * 1_000_003 + zlib.crc32(b"pos|p0|q1|s2")) % 2**63
    assert E.job_seed(0, "q0|s0") != E.job_seed(1, "q0|s0")


def test_configs_extend_the_generation_settings_and_keep_their_defaults():
    extract, sweep = ExtractConfig(n_samples=1, max_new_tokens=48), SteeringSweepConfig()
    assert isinstance(extract, E.GenerationSettings) and isinstance(sweep, E.GenerationSettings)
    assert (extract.n_samples, extract.max_new_tokens, extract.batch_size) == (1, 48, 32)
    assert (sweep.max_new_tokens, sweep.batch_size, sweep.coherence_threshold) == (40, 64, 75.0)
    assert extract.generation_settings() == {
        "max_new_tokens": 48,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 32,
    }
    assert sweep.generation_settings() == {
        "max_new_tokens": 40,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 64,
        "positions": "response",
        "condition": "none",
    }


def test_average_and_summary_leave_out_none():
    assert E.average([None, 10.0, 20.0]) == 15.0
    assert E.average([None]) is None and E.average([]) is None
    records = [
        {"trait_score": 80.0, "coherence": 90.0},
        {"trait_score": None, "coherence": 40.0},
        {"trait_score": 20.0, "coherence": None},
    ]
    summary = E.summarise_scores(records, trait_threshold=50.0, coherence_threshold=50.0)
    assert summary == E.ScoreSummary(
        n=3, trait_mean=50.0, trait_rate=0.5, coherence_mean=65.0, coherent_rate=0.5, n_unscored=1, both_rate=1 / 3
    )  # a missing score is not "both"


def test_generate_calls_group_consecutive_jobs_by_steering():
    vector = torch.ones(3, 4)

    def job(key, layer=None, coef=0.0):
        steering = None if layer is None else E.Steering(vector, layer, coef)
        return E.ReplyJob(key, [1, 2], 0, {"question_text": "q"}, steering)

    jobs = [job("b0"), job("b1"), job("a", 1, 0.5), job("b", 1, 2.0), job("c", 2, 0.5), job("d", 1, 1.0)]
    assert [[j.key for j in part] for part in E._calls(jobs, None)] == [["b0", "b1"], ["a", "b"], ["c"], ["d"]]
    assert [[j.key for j in part] for part in E._calls(jobs, 1)] == [[j.key] for j in jobs]
    with pytest.raises(ValueError, match="question_text"):
        E.ReplyJob("k", [1], 0, {})


def test_evaluate_replies_resumes_from_the_store(tmp_path, tiny_model):
    settings = E.GenerationSettings(max_new_tokens=4, batch_size=2)
    jobs = [
        E.ReplyJob(f"q{i}", [{"role": "user", "content": text}], E.job_seed(0, f"q{i}"), {"question_text": text})
        for i, text in enumerate(["Hi", "Yo", "Hey"])
    ]
    store = JsonlRecords(tmp_path / "responses.jsonl")
    first = E.evaluate_replies(
        tiny_model, jobs[:2], settings, "{question} {answer}", RuleJudge("shouting"), store=store, chunk=1
    )
    again = E.evaluate_replies(
        tiny_model, jobs, settings, "{question} {answer}", RuleJudge("shouting"), RuleJudge("coherence"), store=store
    )
    assert [again[k]["response"] for k in ("q0", "q1")] == [first[k]["response"] for k in ("q0", "q1")]
    assert len(store.load()) == 3 and all("coherence" in again[j.key] for j in jobs)
