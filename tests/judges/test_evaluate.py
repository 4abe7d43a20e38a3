"""Judges against a reader: the metrics checked against hand-computed values, the labeled-set loading, and real
judges (the rules, the offline features) on small labeled data made here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from persona_lens.judges import RuleJudge
from persona_lens.judges.base import COHERENCE_RUBRIC
from persona_lens.judges.evaluate import (
    accuracy,
    auroc,
    balanced_accuracy,
    cohen_kappa,
    combine_readings,
    evaluate_scores,
    format_report,
    load_labeled_set,
    measure_agreement,
    reading_agreement,
)
from persona_lens.judges.offline import FEATURES, RULE_FEATURES, fit_logistic, reply_features

TRUTH = [1, 1, 1, 0, 0, 0, 0, 1]
PREDICTED = [1, 0, 1, 0, 1, 0, 0, 1]
SCORES = [90, 40, 70, 10, 70, 20, 30, 80]


def test_metrics_match_hand_computed_values():
    assert accuracy(TRUTH, PREDICTED) == 0.75  # 6 of 8
    assert balanced_accuracy(TRUTH, PREDICTED) == 0.75  # 3/4 positives, 3/4 negatives
    assert cohen_kappa(TRUTH, PREDICTED) == pytest.approx(0.5)  # (0.75 - 0.5) / (1 - 0.5)
    # positives 90, 40, 70, 80 vs negatives 10, 70, 20, 30: 4 + 3 + 3.5 (a tie counts half) + 4 of 16 pairs
    assert auroc(TRUTH, SCORES) == pytest.approx(14.5 / 16)
    # unbalanced: observed 0.8, chance 0.8 * 0.6 + 0.2 * 0.4 = 0.56
    assert cohen_kappa([1, 1, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx((0.8 - 0.56) / 0.44)
    assert balanced_accuracy([1, 1, 1, 1, 0], [1, 1, 1, 1, 1]) == pytest.approx(0.5)  # all-yes earns chance only


def test_metrics_undefined_where_a_class_is_missing():
    assert math.isnan(balanced_accuracy([1, 1], [1, 0]))
    assert math.isnan(auroc([1, 1], [3, 4]))
    assert cohen_kappa([1, 1], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="0 or 1"):
        accuracy([1, 2], [1, 1])
    with pytest.raises(ValueError, match="2 labels but 3"):
        accuracy([1, 0], [1, 0, 1])


def test_auroc_is_invariant_to_monotone_maps_and_flips_with_the_sign():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    scores = truth + rng.normal(0, 1.0, 200)
    value = auroc(truth, scores)
    assert 0.6 < value < 1.0
    assert auroc(truth, np.exp(scores)) == pytest.approx(value)
    assert auroc(truth, -scores) == pytest.approx(1 - value)


def test_bootstrap_interval_contains_the_point_and_narrows_with_more_rows():
    rng = np.random.default_rng(1)

    def width(n: int) -> float:
        truth = rng.integers(0, 2, n)
        predicted = np.where(rng.random(n) < 0.8, truth, 1 - truth)
        a = measure_agreement(truth, predicted, bootstrap=400, seed=0)
        low, high = a.intervals["accuracy"]
        assert low <= a.accuracy <= high
        return high - low

    assert width(800) < width(50)


def write_set(tmp_path, rows, readings):
    """Replies, generation records and readings as JSONL files; returns their paths."""
    replies = tmp_path / "replies.jsonl"
    generation = tmp_path / "generation.jsonl"
    replies.write_text(
        "".join(
            json.dumps({"id": r[0], "trait": r[1], "trait_definition": "-", "question": r[2], "reply": r[3]}) + "\n"
            for r in rows
        )
    )
    generation.write_text("".join(json.dumps({"id": r[0], "split": r[4], "condition": "x"}) + "\n" for r in rows))
    paths = []
    for name, labels in readings.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"id": rid, "trait_expressed": t, "coherent": c}) + "\n" for rid, (t, c) in labels.items()
            )
        )
        paths.append(path)
    return replies, generation, paths


Q = "What do you do when it rains?"
ROWS = [  # id, trait, question, reply, split; labels (trait, coherent) as a reader would give them by the guide
    ("a", "pirate", Q, "Arr, matey! When it rains I stay below deck with me hearties and a mug o' grog.", "dev"),
    ("b", "pirate", Q, "I usually read a book inside and drink a cup of tea while the rain falls.", "dev"),
    ("c", "pirate", Q, "arr arr arr arr arr arr arr arr arr arr arr arr arr arr arr arr", "dev"),
    ("d", "pirate", Q, "Barn ye blue horse lamp fish sky arr matey the the of", "dev"),
    ("e", "none", Q, "I like to watch the rain from my window and listen to it on the roof.", "dev"),
    ("f", "none", Q, "xq zzv ptk 8#@ !! ?? qqq wvx", "dev"),
    ("g", "pirate", Q, "When it rains, I go for a walk with an umbrella and enjoy the fresh air.", "test"),
]
LABELS = {"a": (1, 1), "b": (0, 1), "c": (1, 0), "d": (1, 0), "e": (0, 1), "f": (0, 0), "g": (0, 1)}


def test_rule_judges_against_labels_made_here(tmp_path):
    other = dict(LABELS, b=(0, 0))  # a second reading that disagrees on one row's coherence
    labeled = load_labeled_set(
        *write_set(tmp_path, ROWS, {"reading_a": LABELS, "reading_b": other})[:2],
        [tmp_path / "reading_a.jsonl", tmp_path / "reading_b.jsonl"],
    )
    items = {r.id: (r.question, r.reply) for r in labeled.replies}
    coherence = dict(zip(items, RuleJudge("coherence").score("", list(items.values()))))
    report = evaluate_scores(labeled, coherence, target="coherent", split="dev", bootstrap=0)
    assert report.disagreed == 1 and report.pooled.n == 5  # b left out; g is test
    truth = [LABELS[i][1] for i in "acdef"]
    predicted = [int(coherence[i] >= 50) for i in "acdef"]
    assert report.pooled.accuracy == pytest.approx(accuracy(truth, predicted))
    # the rule scores the pirate word salad (d) as coherent: the miss the issue quotes, measured here
    assert coherence["d"] >= 50 and report.pooled.accuracy < 1.0
    assert set(report.per_trait) == {"pirate", "none"}
    pirate = {rid: s for rid, s in zip(items, RuleJudge("pirate").score("", list(items.values())))}
    trait = evaluate_scores(labeled, pirate, target="trait", split="dev", bootstrap=0)
    assert set(trait.per_trait) == {"pirate"}  # the default role has no trait
    assert trait.pooled.n == 4 and trait.pooled.positives == 3
    assert "| pooled | 4 |" in format_report(trait)
    inter = reading_agreement(labeled, target="coherent", bootstrap=0)
    assert inter.pooled.n == 7 and inter.pooled.accuracy == pytest.approx(6 / 7)
    assert reading_agreement(labeled, target="trait", bootstrap=0).pooled.kappa == 1.0


def test_combine_readings_keeps_agreed_rows():
    first = {"a": (1, 1), "b": (0, 1), "c": (1, 0)}
    second = {"a": (1, 0), "b": (0, 1)}
    assert combine_readings([first, second], "coherent") == ({"b": 1}, 1)
    assert combine_readings([first, second], "trait") == ({"a": 1, "b": 0}, 0)
    assert combine_readings([first], "coherent") == ({"a": 1, "b": 1, "c": 0}, 0)


def test_loading_refuses_bad_files(tmp_path):
    replies, generation, (reading,) = write_set(tmp_path, ROWS, {"reading_a": LABELS})
    reading.write_text(json.dumps({"id": "a", "trait_expressed": 1, "coherent": 0.5}) + "\n")
    with pytest.raises(ValueError, match="coherent must be 0 or 1"):
        load_labeled_set(replies, generation, [reading])
    reading.write_text(json.dumps({"id": "zz", "trait_expressed": 1, "coherent": 1}) + "\n")
    with pytest.raises(ValueError, match="not in"):
        load_labeled_set(replies, generation, [reading])
    generation.write_text(json.dumps({"id": "a", "split": "train"}) + "\n")
    with pytest.raises(ValueError, match="split dev/test"):
        load_labeled_set(replies, generation, [])
    labeled = load_labeled_set(*write_set(tmp_path, ROWS, {"reading_a": LABELS})[:2], [tmp_path / "reading_a.jsonl"])
    with pytest.raises(ValueError, match="no score for"):
        evaluate_scores(labeled, {"a": 50.0}, target="coherent", split="dev")


def test_rule_features_and_logistic_fit_separate_salad_from_sense():
    items = [(q, reply) for _, _, q, reply, _ in ROWS]
    x = reply_features(None, items)
    assert x.shape == (len(ROWS), len(RULE_FEATURES))
    y = [LABELS[r[0]][1] for r in ROWS]
    model = fit_logistic(x, y, RULE_FEATURES, l2=0.1)
    p = model.probability(x)
    assert balanced_accuracy(y, (p >= 0.5).astype(int)) > balanced_accuracy(y, (x[:, 0] >= 0.5).astype(int))
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, [1] * len(ROWS), RULE_FEATURES)


def test_model_features_on_a_tiny_model(tiny_model):
    items = [(q, reply) for _, _, q, reply, _ in ROWS] + [(Q, "")]
    x = reply_features(tiny_model, items, (None, "You are a pirate."))
    assert x.shape == (len(items), len(FEATURES))
    assert np.isfinite(x).all()
    nll = x[:, FEATURES.index("nll_mean")]
    # the same reply read alone gives the same features (rows batched by equal length, no padding)
    alone = reply_features(tiny_model, items[:1], (None, "You are a pirate."))
    assert alone[0] == pytest.approx(x[0], abs=1e-4)
    assert nll[-1] == 20.0  # the empty reply: the worst value


def test_cli_judges_evaluate_rule_and_scores_and_readers(tmp_path, capsys):
    from persona_lens.cli import main

    other = dict(LABELS, b=(0, 0))
    write_set(tmp_path, ROWS, {"reading_a": LABELS, "reading_b": other})
    out = tmp_path / "report.json"
    saved = tmp_path / "scores.jsonl"
    assert (
        main(
            [
                "judges",
                "evaluate",
                "--set",
                str(tmp_path),
                "--judge",
                "rule",
                "--bootstrap",
                "50",
                "--out",
                str(out),
                "--save-scores",
                str(saved),
            ]
        )
        == 0
    )
    reports = json.loads(out.read_text())
    assert [r["target"] for r in reports] == ["coherent", "trait"]
    assert reports[0]["pooled"]["n"] == 5 and reports[0]["disagreed"] == 1
    assert "| pooled |" in capsys.readouterr().out
    coherent = tmp_path / "coherent.jsonl"
    coherent.write_text(
        "".join(line + "\n" for line in saved.read_text().splitlines() if json.loads(line)["target"] == "coherent")
    )
    assert (
        main(
            [
                "judges",
                "evaluate",
                "--set",
                str(tmp_path),
                "--scores",
                str(coherent),
                "--target",
                "coherent",
                "--bootstrap",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())[0]["pooled"] == reports[0]["pooled"] | {"intervals": {}}
    assert (
        main(
            [
                "judges",
                "evaluate",
                "--set",
                str(tmp_path),
                "--readers",
                "--split",
                "all",
                "--bootstrap",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())[0]["pooled"]["accuracy"] == pytest.approx(6 / 7)


def test_cli_judges_evaluate_bad_input_exits_2(tmp_path, capsys):
    from persona_lens.cli import main

    assert main(["judges", "evaluate", "--set", str(tmp_path)]) == 2
    assert "no replies.jsonl" in capsys.readouterr().err
    write_set(tmp_path, ROWS, {})
    assert main(["judges", "evaluate", "--set", str(tmp_path)]) == 2
    assert "no reading_" in capsys.readouterr().err
    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    assert main(["judges", "evaluate", "--set", str(tmp_path), "--readers"]) == 2
    assert "two readings" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "score": "high"}\n')
    assert main(["judges", "evaluate", "--set", str(tmp_path), "--scores", str(bad), "--target", "coherent"]) == 2
    assert "must be a number" in capsys.readouterr().err
    assert main(["judges", "evaluate", "--set", str(tmp_path), "--scores", str(bad)]) == 2
    assert "--target" in capsys.readouterr().err


def _weights_file(tmp_path, model_name):
    """A weights file fit here on the labeled rows above: the model's own fit on every feature, and the model-free
    fit on the rule features."""
    from persona_lens.judges.offline import FEATURES, RULE_FEATURES

    items = [(q, reply) for _, _, q, reply, _ in ROWS]
    y = [LABELS[r[0]][1] for r in ROWS]
    path = tmp_path / "weights.json"
    fits = {"*": {"coherence": fit_logistic(reply_features(None, items), y, RULE_FEATURES, l2=0.1).to_dict()}}
    if model_name is not None:
        fits[model_name] = {
            "coherence": fit_logistic(
                np.zeros((len(items), len(FEATURES))) + np.arange(len(items))[:, None], y, FEATURES, l2=1.0
            ).to_dict()
        }
    path.write_text(json.dumps({"models": fits}))
    return path


def test_offline_judge_uses_its_model_fit_only_for_that_model(tmp_path, tiny_model):
    from persona_lens.judges import COHERENCE_RUBRIC
    from persona_lens.judges.offline import JUDGE_VERSION, OfflineCoherenceJudge

    items = [(q, reply) for _, _, q, reply, _ in ROWS]
    other = OfflineCoherenceJudge(tiny_model, weights=_weights_file(tmp_path, "some-other-model"))
    assert not other.uses_model and other.judge_id.startswith(f"offline-coherence@v{JUDGE_VERSION}:rules")
    rules = OfflineCoherenceJudge(None, weights=_weights_file(tmp_path, None))
    assert other.score(COHERENCE_RUBRIC, items) == rules.score(COHERENCE_RUBRIC, items)
    own = OfflineCoherenceJudge(
        tiny_model, (None, "You are a pirate."), weights=_weights_file(tmp_path, tiny_model.cfg.model_name)
    )
    assert own.uses_model and tiny_model.cfg.model_name in own.judge_id
    scores = own.score(COHERENCE_RUBRIC, items)
    assert all(0 <= s <= 100 for s in scores)
    assert (
        own.judge_id
        != OfflineCoherenceJudge(tiny_model, weights=_weights_file(tmp_path, tiny_model.cfg.model_name)).judge_id
    )  # the contexts are part of the id
    with pytest.raises(ValueError, match="coherence only"):
        own.score("rate {question} {answer}", items)


def test_offline_judge_gate_skips_the_model_only_below_the_gate(tmp_path, tiny_model, monkeypatch):
    """The cascade: replies the model-free fit puts below the gate keep its probability and are never read by the
    model; the rest get the full fit's, exactly as with no gate. A gate of 0 reads every reply."""
    from persona_lens.judges import COHERENCE_RUBRIC
    from persona_lens.judges import offline as O

    items = [(q, reply) for _, _, q, reply, _ in ROWS]
    weights = _weights_file(tmp_path, tiny_model.cfg.model_name)
    full = O.OfflineCoherenceJudge(tiny_model, weights=weights, gate=0)
    rule_only = O.OfflineCoherenceJudge(None, weights=weights)
    p_full, p_rule = full.probabilities(items), rule_only.probabilities(items)
    gate = float(np.median(p_rule))  # half the rows below it, whatever the fit
    gated = p_rule < gate
    assert 0 < gated.sum() < len(items)
    read: list[str] = []
    original = O.reply_features
    monkeypatch.setattr(
        O,
        "reply_features",
        lambda model, rows, *a, **k: (
            (read.extend(r for _, r in rows) if model else None) or original(model, rows, *a, **k)
        ),
    )
    cascade = O.OfflineCoherenceJudge(tiny_model, weights=weights, gate=gate)
    p_cascade = cascade.probabilities(items)
    assert sorted(read) == sorted(r for (_, r), g in zip(items, gated) if not g)  # the model read only those
    np.testing.assert_allclose(p_cascade[gated], p_rule[gated])
    np.testing.assert_allclose(p_cascade[~gated], p_full[~gated], rtol=1e-6)
    assert cascade.judge_id != full.judge_id  # the gate is part of the id (caches do not mix them)
    assert cascade.score(COHERENCE_RUBRIC, items) == pytest.approx([100 * p for p in p_cascade])


def test_offline_judge_reads_through_an_unhooked_copy_in_its_read_dtype(tmp_path, tiny_model):
    """``read_dtype``: the likelihoods are read by a copy of the model in that dtype, which a hook installed on the
    model does not reach; the judge still refuses a steered model (a mistake), and the dtype is part of its id."""
    import torch

    from persona_lens import steer
    from persona_lens.judges import COHERENCE_RUBRIC
    from persona_lens.judges.offline import OfflineCoherenceJudge

    items = [(q, reply) for _, _, q, reply, _ in ROWS]
    weights = _weights_file(tmp_path, tiny_model.cfg.model_name)
    exact = OfflineCoherenceJudge(tiny_model, weights=weights, gate=0, read_dtype=None)
    half = OfflineCoherenceJudge(tiny_model, weights=weights, gate=0, read_dtype="bfloat16")
    assert exact.reader is tiny_model and half.reader is not tiny_model
    assert next(half.reader.hf_model.parameters()).dtype == torch.bfloat16
    assert next(tiny_model.hf_model.parameters()).dtype == torch.float32  # the model itself is untouched
    assert half.judge_id != exact.judge_id
    x_exact, x_half = exact.features(items), half.features(items)
    model_columns = slice(len(RULE_FEATURES), None)
    np.testing.assert_allclose(x_half[:, : len(RULE_FEATURES)], x_exact[:, : len(RULE_FEATURES)])
    assert not np.array_equal(x_half[:, model_columns], x_exact[:, model_columns])  # read in another dtype
    np.testing.assert_allclose(x_half[:, model_columns], x_exact[:, model_columns], atol=0.5)
    vector = torch.randn(tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model) * 10
    with steer(tiny_model, vector, layer=1, coef=1.0):
        with pytest.raises(RuntimeError, match="hooks are installed"):
            half.score(COHERENCE_RUBRIC, items)
        assert not [n for n, point in half.reader.hook_dict.items() if point._forward_hooks]
    with pytest.raises(ValueError, match="read_dtype"):
        OfflineCoherenceJudge(tiny_model, weights=weights, read_dtype="int8")


@pytest.mark.slow
def test_default_offline_judge_on_smollm2_rejects_the_issues_word_salad(smollm2):
    """The replies issue 23 quotes, which the rule judge scored 100: the shipped SmolLM2 fit must tell them from a
    plain on-topic reply (measured, not asserted against a figure: the salad below 50, the plain reply above)."""
    from persona_lens.judges import COHERENCE_RUBRIC
    from persona_lens.judges.factory import build_judges

    trait = __import__("persona_lens").load_trait("pirate")
    _, judge = build_judges("rule", trait, model=smollm2)
    assert judge.uses_model
    q = "What do you do when it rains?"
    salad = [
        "Barn ye blue horse lamp fish sky arr matey the the of",
        "Arr ye not be search another around, o'er these dis'on me sight, s eah ye a crew o' thieves crew "
        "a-leeer crew a-lad Nightclame",
    ]
    plain = "When it rains, I stay inside with a good book and a cup of hot tea, and listen to the rain on the roof."
    scores = judge.score(COHERENCE_RUBRIC, [(q, s) for s in salad] + [(q, plain)])
    assert max(scores[:2]) < 50 < scores[2], scores


def _scores_file(tmp_path, rows):
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _replace_in(name, old, new, count=1):
    def edit(folder):
        path = folder / name
        path.write_text(path.read_text().replace(old, new, count))

    return edit


def _write(name, text):
    def edit(folder):
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return edit


def _append_first_line(name):
    def edit(folder):
        path = folder / name
        path.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")

    return edit


# A hostile user's files (benchmarks/results/hostile-pass.md): each crashed, was silently accepted, or said less
# than the file, line and field before; each now ends in exit 2 with one sentence naming them.
BAD_SETS = [
    ("replies.jsonl", _write("replies.jsonl", ""), "replies.jsonl holds no reply"),
    ("non-UTF-8 replies", _write("replies.jsonl", b'{"id": "a", "trait": "\xff"}\n'), "replies.jsonl:1: not UTF-8"),
    ("non-UTF-8 reading", _write("reading_a.jsonl", b"\xff\n"), "reading_a.jsonl:1: not UTF-8"),
    ("empty reading", _write("reading_a.jsonl", ""), "reading_a.jsonl holds no label"),
    ("an id that is an object", _write("reading_a.jsonl", '{"id": {"x": 1}}\n'), 'reading_a.jsonl:1: "id" must be'),
    ("a reply id twice", _append_first_line("replies.jsonl"), "replies.jsonl:8: id 'a' is given twice"),
    ("a generation id twice", _append_first_line("generation.jsonl"), "generation.jsonl:8: id 'a' is given twice"),
    ("a label true", _replace_in("reading_a.jsonl", '"coherent": 1', '"coherent": true'), "1: row 'a': coherent must"),
    (
        "a missing question",
        _replace_in("replies.jsonl", '"question"', '"q"'),
        "replies.jsonl:1: reply 'a' has no string",
    ),
    ("a trait that is a path", _replace_in("replies.jsonl", '"pirate"', '"../x.json"', 9), "'../x.json' is a path"),
]


@pytest.mark.parametrize("what, edit, message", BAD_SETS, ids=[case[0] for case in BAD_SETS])
def test_cli_judges_evaluate_names_the_file_line_and_field_of_a_bad_set(tmp_path, capsys, what, edit, message):
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    edit(tmp_path)
    assert main(["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


BAD_SCORES = [
    ("NaN", [{"id": i, "score": math.nan} for i in LABELS], "scores.jsonl:1: id 'a': score must be a number from 0"),
    ("infinite", [{"id": i, "score": math.inf} for i in LABELS], "got inf"),
    ("a bool", [{"id": i, "score": True} for i in LABELS], "got True"),
    ("above 100", [{"id": i, "score": 500} for i in LABELS], "got 500"),
    ("an id twice", [{"id": i, "score": 50} for i in [*LABELS, "a"]], "scores.jsonl:8: id 'a' is scored twice"),
    ("an id of another set", [{"id": i, "score": 50} for i in [*LABELS, "zz"]], "not replies of --set ('zz'"),
    ("no row of the target", [{"id": i, "target": "trait", "score": 50} for i in LABELS], "holds no score for target"),
]


@pytest.mark.parametrize("what, rows, message", BAD_SCORES, ids=[case[0] for case in BAD_SCORES])
def test_cli_judges_evaluate_refuses_scores_that_are_not_0_to_100_once_per_reply(tmp_path, capsys, what, rows, message):
    """NaN, infinite, bool and out-of-range scores were taken as figures (exit 0); an id scored twice silently
    kept the last; ids of another reply set were ignored."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    scores = _scores_file(tmp_path, rows)
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--scores", str(scores), "--target", "coherent"]
    assert main([*argv, "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_saved_scores_of_both_targets_are_read_per_target(tmp_path, capsys):
    """``--save-scores`` writes both targets' scores in one file (each id twice); ``--scores`` of that file read
    each id's last row, the trait score, as its coherence score. Now the rows of the other target are left out."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    out, saved = tmp_path / "out.json", tmp_path / "saved.jsonl"
    common = ["judges", "evaluate", "--set", str(tmp_path), "--bootstrap", "0", "--out", str(out)]
    assert main([*common, "--judge", "rule", "--save-scores", str(saved)]) == 0
    judged = {r["target"]: r["pooled"] for r in json.loads(out.read_text())}
    for target in ("coherent", "trait"):
        assert main([*common, "--scores", str(saved), "--target", target]) == 0
        assert json.loads(out.read_text())[0]["pooled"] == judged[target]
    capsys.readouterr()


def test_one_class_labels_are_marked_not_passed_off_as_a_judge_measure(tmp_path, capsys):
    """Every row labeled coherent: balanced accuracy and AUROC are undefined, kappa is 0 or 1 by convention; the
    table printed '-' and 0.000 with no word of why, and the JSON gave kappa as if it measured the judge."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": {i: (t, 1) for i, (t, _) in LABELS.items()}})
    out = tmp_path / "out.json"
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--target", "coherent"]
    assert main([*argv, "--bootstrap", "20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "one class only among the labels" in printed and "pooled, none, pirate" in printed
    pooled = json.loads(out.read_text())[0]["pooled"]
    assert pooled["one_class"] is True and pooled["balanced_accuracy"] is None and pooled["auroc"] is None
    assert pooled["kappa"] == 0.0 and pooled["predicted_positives"] < pooled["n"]  # the rule says no to some
    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    assert main([*argv, "--bootstrap", "0", "--out", str(out)]) == 0
    assert "one class only" not in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["pooled"]["one_class"] is False


def test_a_split_with_no_reference_label_is_refused_not_a_table_of_dashes(tmp_path, capsys):
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": {"a": (1, 1)}})  # labels one dev row only
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--bootstrap", "0"]
    assert main([*argv, "--split", "test"]) == 2
    assert "no reply of the test split has a reference label" in capsys.readouterr().err
    assert main([*argv, "--split", "dev", "--target", "coherent"]) == 0


def test_offline_judge_refuses_a_gate_batch_size_or_read_dtype_it_would_misread(tmp_path, tiny_model):
    """A NaN or negative gate silently read every reply (gate 0), a gate above 1 read none; batch_size 0 or -1
    crashed inside the reading (range() / IndexError); a junk read_dtype was ignored where no model reads."""
    from persona_lens.core.validate import BadValue
    from persona_lens.judges.offline import OfflineCoherenceJudge

    weights = _weights_file(tmp_path, tiny_model.cfg.model_name)
    for gate in (math.nan, -0.1, 1.5):
        with pytest.raises(BadValue, match="gate"):
            OfflineCoherenceJudge(tiny_model, weights=weights, gate=gate)
    for size in (0, -1):
        with pytest.raises(BadValue, match="batch_size"):
            OfflineCoherenceJudge(tiny_model, weights=weights, batch_size=size)
    with pytest.raises(ValueError, match="read_dtype 'junk'"):
        OfflineCoherenceJudge(None, read_dtype="junk")
    assert OfflineCoherenceJudge(tiny_model, weights=weights, gate=1.0).gate == 1.0


def test_offline_judge_without_a_fit_for_the_model_says_it_scored_with_rules_only(tmp_path, capsys):
    """``--judge offline --model tiny-llama``: no fit for that model, so the judge falls back to its model-free fit;
    the report was still named "offline (coherent)", as if the model's likelihoods had been read."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    out = tmp_path / "out.json"
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--model", "tiny-llama", "--target", "coherent"]
    assert main([*argv, "--bootstrap", "0", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no fit for tiny-llama" in captured.err and "model-free fit" in captured.err
    assert json.loads(out.read_text())[0]["judge"] == "offline, rules-only fit (coherent)"


def test_the_default_reference_leaves_out_a_reading_of_only_some_replies(tmp_path, capsys):
    """benchmarks/labels/reading_c.jsonl is a third reading of the 31 disagreements only; taken by default with a
    and b, it cut the reference to the rows all three labeled and agreed on (dev coherence: 9 rows, every one 'no',
    against the 294 of benchmarks/results/judges.md). Now a partial reading is used only when named (--labels)."""
    from persona_lens.cli import main

    other = dict(LABELS, b=(0, 0))
    write_set(tmp_path, ROWS, {"reading_a": LABELS, "reading_b": other, "reading_c": {"a": (1, 1)}})
    out = tmp_path / "out.json"
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--target", "coherent"]
    assert main([*argv, "--bootstrap", "0", "--out", str(out)]) == 0
    assert "reading_c.jsonl labels 1 of 7 replies: left out of the default reference" in capsys.readouterr().err
    assert json.loads(out.read_text())[0]["pooled"]["n"] == 5  # a and b agree on 5 dev rows
    named = [f"--labels={tmp_path / name}.jsonl" for name in ("reading_a", "reading_c")]
    assert main([*argv, *named, "--bootstrap", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["pooled"]["n"] == 1  # named: the rows both label (and agree on)
    assert "the reference uses only the rows every reading labeled" in capsys.readouterr().err


def test_report_json_has_no_nan_where_an_interval_is_undefined(tmp_path):
    """The intervals of balanced accuracy and AUROC on one-class rows were written as NaN: not JSON."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": {i: (t, 1) for i, (t, _) in LABELS.items()}})
    out = tmp_path / "out.json"
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--target", "coherent"]
    assert main([*argv, "--bootstrap", "20", "--out", str(out)]) == 0

    def refuse(name):
        raise AssertionError(f"{name} in {out}")

    pooled = json.loads(out.read_text(), parse_constant=refuse)[0]["pooled"]
    assert pooled["intervals"]["balanced_accuracy"] == [None, None] and pooled["intervals"]["accuracy"][0] is not None


def test_bootstrap_beyond_its_bound_is_refused_before_any_work(tmp_path, capsys):
    """``--bootstrap 1000000000000`` was accepted (an integer >= 0) and would keep 10**12 draws in memory."""
    from persona_lens.cli import main
    from persona_lens.core.validate import BadValue
    from persona_lens.judges.evaluate import MAX_BOOTSTRAP

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule"]
    assert main([*argv, "--bootstrap", "1000000000000"]) == 2
    assert "--bootstrap must be <= 100,000 resamples" in capsys.readouterr().err
    with pytest.raises(BadValue, match="bootstrap must be <="):
        measure_agreement(TRUTH, PREDICTED, bootstrap=MAX_BOOTSTRAP + 1)
    assert measure_agreement(TRUTH, PREDICTED, bootstrap=3).intervals["accuracy"][0] <= accuracy(TRUTH, PREDICTED)


@pytest.mark.parametrize("flag, target", [("--out", "reading_a.jsonl"), ("--save-scores", "replies.jsonl")])
def test_outputs_never_replace_the_labeled_set_they_measure(tmp_path, capsys, flag, target):
    """``--out reading_a.jsonl`` replaced the reading with the report (exit 0); the next run then failed."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    before = (tmp_path / target).read_bytes()
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--judge", "rule", "--bootstrap", "0"]
    assert main([*argv, flag, str(tmp_path / target)]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    assert (tmp_path / target).read_bytes() == before
    same = str(tmp_path / "x.json")
    assert main([*argv, "--out", same, "--save-scores", same]) == 2
    assert "the same file" in capsys.readouterr().err


def test_offline_judge_refuses_an_item_longer_than_the_models_context(tmp_path, tiny_model):
    """A question longer than the model's context was read silently (10,000 words: 28 s on tiny-llama, at
    positions the model never saw); replies are cut to 256 tokens, so only the question can overflow."""
    from persona_lens.judges.offline import OfflineCoherenceJudge

    judge = OfflineCoherenceJudge(tiny_model, weights=_weights_file(tmp_path, tiny_model.cfg.model_name), gate=0)
    limit = tiny_model.hf_model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"more than the {limit}-token context"):
        judge.score(COHERENCE_RUBRIC, [("word " * limit, "A fine reply.")])
    long_reply = judge.score(COHERENCE_RUBRIC, [(Q, "word " * (2 * limit))])  # cut to 256 tokens: read
    assert 0 <= long_reply[0] <= 100


def test_a_reading_named_twice_is_refused_not_a_perfect_inter_reading_kappa(tmp_path, capsys):
    """``--readers --labels a --labels a`` reported kappa 1.000 between a reading and itself."""
    from persona_lens.cli import main

    write_set(tmp_path, ROWS, {"reading_a": LABELS})
    reading = str(tmp_path / "reading_a.jsonl")
    argv = ["judges", "evaluate", "--set", str(tmp_path), "--readers", "--labels", reading, "--labels", reading]
    assert main([*argv, "--bootstrap", "0"]) == 2
    assert "a reading is given twice" in capsys.readouterr().err
