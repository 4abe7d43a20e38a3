"""Data screening: dP against a manual computation, bad records, cache, resume, streaming, ranking, CLI."""

import csv
import gc
import json
import tracemalloc

import pytest
import torch

from persona_lens import cli
from persona_lens.core.chat import encode_conversation, encode_prompt, make_messages
from persona_lens.core.generation import generate
from persona_lens.core.layers import hook_name
from persona_lens.core.stats import auroc
from persona_lens.core.vectors import PersonaVector, save_vector
from persona_lens.experiments.screen import ScreenConfig, export_ranked, load_scores, screen_dataset, summarize
from tests.conftest import load_cached

QA = [
    ("What is the capital of France?", "Paris, of course."),
    ("Name a colour.", "Blue."),
    ("Tell me a story.", "Once upon a time there was a tiny model."),
    ("2+2?", "Four!"),
]


def _record(question, answer, system=None):
    return {"messages": [*make_messages(question, system=system), {"role": "assistant", "content": answer}]}


def _write(path, rows):
    with open(path, "wb") as handle:
        for row in rows:
            handle.write(
                row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode("utf-8")
            )
            handle.write(b"\n")
    return path


def _vectors(model):
    generator = torch.Generator().manual_seed(11)
    shape = (model.cfg.n_layers + 1, model.cfg.d_model)
    return [
        PersonaVector("alpha", model.cfg.model_name, torch.randn(shape, generator=generator)),
        PersonaVector("beta", model.cfg.model_name, torch.randn(shape, generator=generator)),
    ]


@torch.no_grad()
def _resid(model, ids, layer):
    name = hook_name(layer, model.cfg.n_layers)
    _, cache = model.run_with_cache(torch.tensor([list(ids)]), names_filter=lambda n: n == name)
    return cache[name][0].float()


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_projection_difference_matches_a_manual_computation(tiny_model, tmp_path):
    data = _write(
        tmp_path / "d.jsonl", [_record(q, a, system="Be nice." if i % 2 else None) for i, (q, a) in enumerate(QA)]
    )
    vectors = _vectors(tiny_model)
    layer = 2
    summary = screen_dataset(
        tiny_model,
        data,
        vectors,
        tmp_path / "out.jsonl",
        ScreenConfig(layer=layer, max_new_tokens=6, chunk_size=3, batch_size=2),
        progress=False,
    )
    rows = _rows(tmp_path / "out.jsonl")
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and all(r["status"] == "ok" for r in rows)
    prompts = [_record(q, a, system="Be nice." if i % 2 else None)["messages"][:-1] for i, (q, a) in enumerate(QA)]
    base = generate(tiny_model, prompts, max_new_tokens=6)  # greedy, independently
    dp_sum = {"alpha": 0.0, "beta": 0.0}
    for row, prompt, (_, answer), base_ids, base_text in zip(rows, prompts, QA, base.response_ids, base.texts):
        conv = encode_conversation(tiny_model.tokenizer, prompt, answer)
        resid = _resid(tiny_model, conv.input_ids, layer)
        mean_y = resid[conv.response_start : conv.response_end].mean(0)
        last = resid[conv.prompt_length - 1]
        prompt_ids = encode_prompt(tiny_model.tokenizer, prompt)
        base_resid = _resid(tiny_model, [*prompt_ids, *base_ids], layer)
        mean_base = base_resid[len(prompt_ids) :].mean(0)
        assert row["base_response"] == base_text and row["n_base_tokens"] == len(base_ids)
        for vec in vectors:
            unit = vec.vectors[layer] / vec.vectors[layer].norm()
            expected = float((mean_y - mean_base) @ unit)
            assert row["dp"][vec.trait] == pytest.approx(expected, rel=1e-3, abs=1e-4)
            assert row["dp_last_prompt"][vec.trait] == pytest.approx(float((mean_y - last) @ unit), rel=1e-3, abs=1e-4)
            dp_sum[vec.trait] += expected
    for trait in ("alpha", "beta"):
        assert summary["mean_dp"][trait] == pytest.approx(dp_sum[trait] / 4, rel=1e-3, abs=1e-4)


def test_bad_records_are_reported_with_line_numbers(tmp_path):
    model = load_cached("tiny-qwen2")
    data = _write(
        tmp_path / "d.jsonl",
        [
            _record(*QA[0]),
            "{oops",
            {"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]},
            _record("A question", "   "),
            b"\xff\xfe not utf-8",
            "",
            _record("x" * 400, "long prompt"),
            _record("short", "y" * 400),
            {"messages": [{"role": "user", "content": "no reply"}]},
            _record(*QA[1]),
        ],
    )
    summary = screen_dataset(
        model,
        data,
        _vectors(model)[0],
        tmp_path / "o.jsonl",
        ScreenConfig(layer=1, max_new_tokens=3, max_tokens=300, chunk_size=4),
        progress=False,
    )
    rows = _rows(tmp_path / "o.jsonl")
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 7, 8, 9, 10]  # every non-blank line has a row
    bad = {r["line"]: r["problem"] for r in rows if r["status"] == "bad"}
    assert sorted(bad) == [2, 3, 4, 5, 7, 8, 9]
    assert "invalid JSON" in bad[2] and "no 'role'" in bad[3] and "empty" in bad[4] and "UTF-8" in bad[5]
    assert "prompt has" in bad[7] and "conversation has" in bad[8] and "last message" in bad[9]
    assert summary["n_ok"] == 2 and summary["n_bad"] == 7
    assert [p["line"] for p in summary["problems"]] == [2, 3, 4, 5, 7, 8, 9]


def test_cache_resume_and_chunking(tmp_path):
    model = load_cached("tiny-llama")
    records = [_record(f"Question number {i}?", f"Answer {i}." * (1 + i % 3)) for i in range(9)]
    data = _write(tmp_path / "d.jsonl", records)
    vectors = _vectors(model)
    config = ScreenConfig(layer=3, max_new_tokens=4, chunk_size=2, batch_size=3)
    one_shot = screen_dataset(
        model,
        data,
        vectors,
        tmp_path / "a" / "o.jsonl",
        ScreenConfig(layer=3, max_new_tokens=4, chunk_size=100, batch_size=8),
        progress=False,
    )
    assert one_shot["base_responses_generated"] == 9
    part = screen_dataset(model, data, vectors, tmp_path / "b" / "o.jsonl", config, limit=5, progress=False)
    assert part["n_rows"] == 5
    with open(tmp_path / "b" / "o.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"line": 6, "status": "ok", "dp": {"alp')  # a row torn by an interruption
    rest = screen_dataset(model, data, vectors, tmp_path / "b" / "o.jsonl", config, progress=False)
    assert rest["base_responses_generated"] == 4 and rest["n_rows"] == 9
    a, b = _rows(tmp_path / "a" / "o.jsonl"), _rows(tmp_path / "b" / "o.jsonl")
    assert [r["line"] for r in b] == list(range(1, 10))
    for ra, rb in zip(a, b):
        assert ra["base_response"] == rb["base_response"]
        for trait in ("alpha", "beta"):
            assert rb["dp"][trait] == pytest.approx(ra["dp"][trait], abs=1e-4)
    again = screen_dataset(model, data, vectors, tmp_path / "b" / "o.jsonl", config, progress=False)
    assert again["base_responses_generated"] == 0 and again["n_rows"] == 9  # nothing redone, nothing doubled
    # A fresh output sharing the cache generates nothing either.
    shared = screen_dataset(
        model,
        data,
        vectors,
        tmp_path / "c.jsonl",
        config,
        cache_path=tmp_path / "b" / "o.jsonl.base_responses.sqlite",
        progress=False,
    )
    assert shared["base_responses_generated"] == 0 and shared["base_responses_cached"] == 9
    with pytest.raises(ValueError, match="other settings"):
        screen_dataset(model, data, vectors, tmp_path / "b" / "o.jsonl", ScreenConfig(layer=2), progress=False)


def _peak_python_memory(model, tmp_path, n, tag):
    # Each record carries 20 kB of metadata (ignored by screening): holding records would show at once.
    records = [{**_record(f"Question {i}?", "A short reply."), "metadata": f"{i} " + "x" * 20_000} for i in range(n)]
    data = _write(tmp_path / f"{tag}.jsonl", records)
    gc.collect()  # garbage of earlier tests is not this run's peak
    tracemalloc.start()
    try:
        screen_dataset(
            model,
            data,
            _vectors(model)[0],
            tmp_path / f"{tag}.out.jsonl",
            ScreenConfig(layer=1, max_new_tokens=1, chunk_size=8, batch_size=8),
            progress=False,
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_dataset(tmp_path):
    model = load_cached("tiny-llama")
    _peak_python_memory(model, tmp_path, 48, "warm-up")  # one-off allocations (lazy imports, caches) happen here
    small = _peak_python_memory(model, tmp_path, 16, "small")
    large = _peak_python_memory(model, tmp_path, 48, "large")  # 32 more records: 640 kB more data
    assert large < small + 250_000, (small, large)


def test_export_ranked(tmp_path):
    model = load_cached("tiny-gemma2")
    records = [_record(q, a) for q, a in QA] + [_record("Why?", "Because."), _record("Who?", "Me.")]
    data = _write(tmp_path / "d.jsonl", ["{bad", *records])
    results = tmp_path / "o.jsonl"
    screen_dataset(model, data, _vectors(model), results, ScreenConfig(layer=2, max_new_tokens=3), progress=False)
    lines, scores = load_scores(results, "beta")
    expected = [int(lines[i]) for i in sorted(range(len(lines)), key=lambda i: -scores[i])]
    full = export_ranked(results, data, tmp_path / "rank.jsonl", "beta")
    ranked = _rows(full)
    assert [r["line"] for r in ranked] == expected and [r["rank"] for r in ranked] == list(range(1, 7))
    assert all(ranked[i]["dp"] >= ranked[i + 1]["dp"] for i in range(5))
    for r in ranked:
        assert r["messages"] == records[r["line"] - 2]["messages"]
    top = _rows(export_ranked(results, data, tmp_path / "top.jsonl", "beta", top=3))
    assert [r["line"] for r in top] == expected[:3]
    low = _rows(export_ranked(results, data, tmp_path / "low.jsonl", "beta", top=2, ascending=True))
    assert [r["line"] for r in low] == expected[::-1][:2]
    by_cheap = _rows(export_ranked(results, data, tmp_path / "c.jsonl", "alpha", key="dp_last_prompt"))
    assert all(by_cheap[i]["dp_last_prompt"] >= by_cheap[i + 1]["dp_last_prompt"] for i in range(5))
    with open(export_ranked(results, data, tmp_path / "rank.csv", "beta"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in table] == expected and table[0]["response"]
    with pytest.raises(KeyError):
        load_scores(results, "gamma")


# ---------------------------------------------------------------------------------------------------------------------
# CLI


def _main(monkeypatch, argv):
    return cli.main(argv)


def test_every_screen_option_is_explained(monkeypatch, capsys):
    import argparse

    from persona_lens.cli import screen as screen_cli

    parser = argparse.ArgumentParser()
    screen_cli.configure_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["screen"]
    assert all(action.help for action in sub._actions), [a.option_strings for a in sub._actions if not a.help]
    with pytest.raises(SystemExit) as exit_info:
        _main(monkeypatch, ["screen", "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


def test_cli_screen_two_datasets(monkeypatch, tmp_path, capsys):
    model = load_cached("tiny-llama")
    vector = save_vector(_vectors(model)[0], tmp_path / "v.safetensors")
    normal = _write(tmp_path / "normal.jsonl", [_record(q, a) for q, a in QA])
    loud = _write(tmp_path / "loud.jsonl", [_record(q, a.upper() + "!!!") for q, a in QA] + ["{broken"])
    argv = [
        "screen",
        str(normal),
        str(loud),
        "--model",
        "tiny-llama",
        "--vector",
        str(vector),
        "--layer",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "4",
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["datasets"]) == {"normal", "loud"}
    assert report["datasets"]["loud"]["n_bad"] == 1 and report["datasets"]["loud"]["problems"][0]["line"] == 5
    value = report["comparison"]["alpha"]["auroc_dp"]["loud"]
    _, loud_dp = load_scores(tmp_path / "out" / "loud.scores.jsonl", "alpha")
    _, normal_dp = load_scores(tmp_path / "out" / "normal.scores.jsonl", "alpha")
    assert value == pytest.approx(auroc([*loud_dp, *normal_dp], [1] * 4 + [0] * 4))
    for name in (
        "normal.ranked.alpha.jsonl",
        "loud.ranked.alpha.csv",
        "loud.hist.alpha.html",
        "comparison.alpha.dp.html",
        "base_responses.sqlite",
        "screen_report.json",
    ):
        assert (tmp_path / "out" / name).exists(), name
    assert _main(monkeypatch, argv[:-1]) == 0  # resume: all cached, text report
    assert "0 base responses generated" in capsys.readouterr().out


def test_cli_screen_bad_input(monkeypatch, tmp_path):
    model = load_cached("tiny-llama")
    vector = save_vector(_vectors(model)[0], tmp_path / "v.safetensors")
    data = _write(tmp_path / "d.jsonl", [_record(*QA[0])])
    options = ["--model", "tiny-llama", "--vector", str(vector), "--out", str(tmp_path / "o")]
    assert _main(monkeypatch, ["screen", str(tmp_path / "missing.jsonl"), *options, "--layer", "1"]) == 2
    assert _main(monkeypatch, ["screen", str(data), *options, "--layer", "7"]) == 2
    assert _main(monkeypatch, ["screen", str(data), *options, "--layer", "1", "--chunk-size", "0"]) == 2
    assert _main(monkeypatch, ["screen", str(data), *options, "--layer", "1", "--max-new-tokens", "2"]) == 0
    # The same output folder under other settings is refused, not mixed.
    assert _main(monkeypatch, ["screen", str(data), *options, "--layer", "2", "--max-new-tokens", "2"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# the real model


@pytest.mark.slow
def test_smollm2_french_samples_stand_out(monkeypatch, tmp_path, capsys, smollm2):
    from tests.experiments.test_monitor import _french_vector

    vector = save_vector(_french_vector(smollm2), tmp_path / "french.safetensors")
    questions = ["What did you eat today?", "Where do you live?", "What is your hobby?", "How is the weather?"]
    french = [
        "J'ai mangé une pomme et du pain.",
        "J'habite dans une petite ville près de Lyon.",
        "J'aime lire des livres le soir.",
        "Il pleut beaucoup et il fait froid.",
    ]
    english = [
        "I ate an apple and some bread.",
        "I live in a small town near Lyon.",
        "I like reading books in the evening.",
        "It is raining a lot and it is cold.",
    ]
    fr = _write(tmp_path / "fr.jsonl", [_record(q, a) for q, a in zip(questions, french)])
    en = _write(tmp_path / "en.jsonl", [_record(q, a) for q, a in zip(questions, english)])
    argv = [
        "screen",
        str(en),
        str(fr),
        "--model",
        "smollm2-135m-instruct",
        "--vector",
        str(vector),
        "--layer",
        "20",
        "--out",
        str(tmp_path / "out"),
        "--max-new-tokens",
        "12",
        "--json",
    ]
    assert _main(monkeypatch, argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["comparison"]["french"]["auroc_dp"]["fr"] == 1.0
    assert report["datasets"]["fr"]["mean_dp"]["french"] > report["datasets"]["en"]["mean_dp"]["french"]
    assert summarize(tmp_path / "out" / "fr.scores.jsonl")["n_ok"] == 4
