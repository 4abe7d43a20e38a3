"""How well a judge agrees with a reader: accuracy, balanced accuracy, Cohen's kappa and the AUROC of the raw score,
each with a bootstrap 95% interval, per trait and pooled, on a labeled reply set's dev or test split.

A labeled set is three JSONL files (the layout of ``benchmarks/labels/``):

* replies: ``id``, ``trait``, ``trait_definition``, ``question``, ``reply`` (what readers and judges see);
* generation: ``id`` -> ``split`` (``dev``/``test``) and how the reply was made (never shown to readers);
* one or more readings: ``id``, ``trait_expressed`` (0/1), ``coherent`` (0/1), optional ``note``.

With two readings the reference is the rows on which they agree (:func:`combine_readings`; the rows they disagree
on are counted and left out), and :func:`reading_agreement` reports how often they agree (Cohen's kappa and the
rest, by the same code as for a judge). A judge's 0-100 score becomes a verdict at ``threshold`` (score >= threshold
means "yes"); a None score counts as "no" and as the lowest score for the AUROC, and is counted in ``n_none``.
Rows of trait ``none`` (the default role) have no trait: they count for coherence only.

    from persona_lens.judges.evaluate import load_labeled_set, evaluate_scores
    labeled = load_labeled_set("benchmarks/labels/replies.jsonl", "benchmarks/labels/generation.jsonl",
                               ["benchmarks/labels/reading_a.jsonl", "benchmarks/labels/reading_b.jsonl"])
    report = evaluate_scores(labeled, scores, target="coherent", split="dev")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_lens.judges.base import Score

__all__ = [
    "TARGETS",
    "SPLITS",
    "LabeledReply",
    "LabeledSet",
    "Agreement",
    "AgreementReport",
    "accuracy",
    "balanced_accuracy",
    "cohen_kappa",
    "auroc",
    "measure_agreement",
    "MAX_BOOTSTRAP",
    "check_bootstrap",
    "read_jsonl",
    "read_scores",
    "load_readings",
    "combine_readings",
    "load_labeled_set",
    "evaluate_scores",
    "reading_agreement",
    "format_report",
]

TARGETS = ("coherent", "trait")
SPLITS = ("dev", "test", "all")
NO_TRAIT = "none"


# ---------------------------------------------------------------------------------------------------------------------
# metrics (plain numpy; NaN where undefined)


def _arrays(truth: Sequence[int], predicted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} labels but {p.shape[0]} predictions")
    if not set(np.unique(t)) <= {0, 1} or not set(np.unique(p)) <= {0, 1}:
        raise ValueError("labels and predictions must be 0 or 1")
    return t, p


def accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """Share of rows where ``predicted`` equals ``truth`` (NaN for no rows)."""
    t, p = _arrays(truth, predicted)
    return float(np.mean(t == p)) if t.size else math.nan


def balanced_accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """Mean of the recall on the positives and on the negatives (NaN when one class is absent from ``truth``)."""
    t, p = _arrays(truth, predicted)
    if not (t == 1).any() or not (t == 0).any():
        return math.nan
    return float((np.mean(p[t == 1] == 1) + np.mean(p[t == 0] == 0)) / 2)


def cohen_kappa(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """Cohen's kappa, (observed - chance agreement) / (1 - chance), chance from the two marginals. 1.0 when both
    agree on every row and chance agreement is 1 (one class only); NaN for no rows."""
    t, p = _arrays(truth, predicted)
    if not t.size:
        return math.nan
    observed = np.mean(t == p)
    chance = np.mean(t) * np.mean(p) + np.mean(1 - t) * np.mean(1 - p)
    if chance == 1.0:
        return 1.0 if observed == 1.0 else math.nan
    return float((observed - chance) / (1 - chance))


def auroc(truth: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for ``truth``: the probability that a random positive scores above a
    random negative, ties counting one half (Mann-Whitney). NaN when one class is absent."""
    t = np.asarray(truth, dtype=int)
    s = np.asarray(scores, dtype=float)
    if t.shape != s.shape:
        raise ValueError(f"{t.shape[0]} labels but {s.shape[0]} scores")
    pos, neg = s[t == 1], s[t == 0]
    if not pos.size or not neg.size:
        return math.nan
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(values.size)
    start = 0
    while start < values.size:  # average ranks over ties
        stop = start
        while stop + 1 < values.size and values[stop + 1] == values[start]:
            stop += 1
        ranks[start : stop + 1] = (start + stop) / 2 + 1
        start = stop + 1
    rank_of = np.empty(values.size)
    rank_of[order] = ranks
    u = rank_of[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class Agreement:
    """One judge (or reading) against the reference on ``n`` rows (``positives`` of them labeled 1).

    Each metric has a bootstrap 95% interval in ``intervals`` (``[low, high]``; resamples where the metric is
    undefined are skipped). ``auroc`` is NaN when no scores were given."""

    n: int
    positives: int
    predicted_positives: int
    accuracy: float
    balanced_accuracy: float
    kappa: float
    auroc: float
    n_none: int = 0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def one_class(self) -> bool:
        """Whether every labeled row has the same label: balanced accuracy and AUROC are undefined, and kappa is 1
        or 0 by convention (see :func:`cohen_kappa`), not a measure of the judge."""
        return self.n > 0 and self.positives in (0, self.n)

    def to_dict(self) -> dict[str, Any]:
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}
        # an undefined interval is null too: NaN is not JSON (jq and JavaScript refuse the file)
        out["intervals"] = {
            name: [None if math.isnan(x) else x for x in bounds] for name, bounds in self.intervals.items()
        }
        return out | {"one_class": self.one_class}


def _interval(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return (math.nan, math.nan)
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))


#: The most bootstrap resamples (each re-measures every metric on every row: about 1 ms for 500 rows on a CPU core,
#: so 100,000 take minutes; 10**12 would never end).
MAX_BOOTSTRAP = 100_000


def check_bootstrap(value: Any, name: str = "bootstrap") -> int:
    """A number of bootstrap resamples: an integer from 0 (no intervals) to :data:`MAX_BOOTSTRAP`."""
    from persona_lens.core.validate import BadValue, non_negative_int

    number = non_negative_int(value, name)
    if number > MAX_BOOTSTRAP:
        raise BadValue(f"{name} must be <= {MAX_BOOTSTRAP:,} resamples (default 1,000), got {number:,}")
    return number


def measure_agreement(
    truth: Sequence[int],
    predicted: Sequence[int],
    scores: Sequence[float] | None = None,
    *,
    n_none: int = 0,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Agreement:
    """:class:`Agreement` of ``predicted`` (and of the raw ``scores``, for the AUROC) with ``truth``, with
    ``bootstrap`` resamples of the rows (seeded) for the 95% intervals (0: no intervals)."""
    t, p = _arrays(truth, predicted)
    s = None if scores is None else np.asarray(scores, dtype=float)
    metrics: dict[str, Callable[[np.ndarray], float]] = {
        "accuracy": lambda i: accuracy(t[i], p[i]),
        "balanced_accuracy": lambda i: balanced_accuracy(t[i], p[i]),
        "kappa": lambda i: cohen_kappa(t[i], p[i]),
    }
    if s is not None:
        metrics["auroc"] = lambda i: auroc(t[i], s[i])
    everything = np.arange(t.size)
    point = {name: f(everything) for name, f in metrics.items()}
    intervals: dict[str, tuple[float, float]] = {}
    bootstrap = check_bootstrap(bootstrap)
    if bootstrap and t.size:
        rng = np.random.default_rng(seed)
        values: dict[str, list[float]] = {name: [] for name in metrics}
        for _ in range(bootstrap):  # one draw at a time: memory does not grow with the resamples
            draw = rng.integers(0, t.size, t.size)
            for name, f in metrics.items():
                values[name].append(f(draw))
        intervals = {name: _interval(values[name]) for name in metrics}
    return Agreement(
        n=int(t.size),
        positives=int(t.sum()),
        predicted_positives=int(p.sum()),
        accuracy=point["accuracy"],
        balanced_accuracy=point["balanced_accuracy"],
        kappa=point["kappa"],
        auroc=point.get("auroc", math.nan),
        n_none=n_none,
        intervals=intervals,
    )


# ---------------------------------------------------------------------------------------------------------------------
# the labeled set


def _json_objects(path: str | Path, what: str, keys: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file, each an object holding ``keys``; a missing,
    non-UTF-8 or malformed file or line raises naming the file and line."""
    from persona_lens.core.io import read_text

    rows = []
    for number, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or any(key not in row for key in keys):
            wanted = " and ".join(f'a "{key}"' if key != "id" else 'an "id"' for key in keys)
            raise ValueError(f"{path}:{number}: each line must be a JSON object with {wanted}")
        rows.append((number, row))
    return rows


def _read_rows(path: str | Path, what: str = "labeled set") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL file; refuses (naming the file and line) a file
    that is missing, a folder or not UTF-8 (:func:`persona_lens.core.io.read_text`), a malformed line, a line that is
    not an object, an ``id`` that is not a non-empty string or an integer, and an id given twice."""
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for number, row in _json_objects(path, what, ("id",)):
        rid = row["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
            raise ValueError(
                f'{path}:{number}: "id" must be a non-empty string or an integer, got {type(rid).__name__} {rid!r}'
            )
        if str(rid) in seen:
            raise ValueError(
                f"{path}:{number}: id {str(rid)!r} is given twice (first on line {seen[str(rid)]}); give each row "
                "its own id"
            )
        seen[str(rid)] = number
        rows.append((number, row))
    return rows


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file, one a line (blank lines skipped), each with a unique ``id`` (a non-empty string
    or an integer); a missing, non-UTF-8 or malformed file or line raises naming the file and line."""
    return [row for _, row in _read_rows(path)]


def _label(path: str | Path, number: int, row: dict[str, Any], key: str) -> int:
    value = row.get(key)
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(f"{path}:{number}: row {row['id']!r}: {key} must be 0 or 1, got {value!r}")
    return int(value)


def load_readings(path: str | Path) -> dict[str, tuple[int, int]]:
    """``id -> (trait_expressed, coherent)`` from a reading file; every value must be 0 or 1 (not true/false), ids
    unique, and the file must label at least one row."""
    out = {
        str(row["id"]): (_label(path, number, row, "trait_expressed"), _label(path, number, row, "coherent"))
        for number, row in _read_rows(path, "reading")
    }
    if not out:
        raise ValueError(
            f"{path} holds no label; give a reading with one JSON object a line (id, trait_expressed, coherent)"
        )
    return out


def read_scores(path: str | Path, target: str | None = None) -> dict[str, float | None]:
    """``id -> score`` from a judge's scores file: one ``{"id", "score"}`` a line, the score a finite number in
    [0, 100] or null. Rows with a ``"target"`` (as ``judges evaluate --save-scores`` writes them, both targets in one
    file) count only for that ``target``; an id may appear once per target."""
    if target is not None and target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    out: dict[str, float | None] = {}
    first: dict[str, int] = {}
    for number, row in _json_objects(path, "the scores file", ("id", "score")):
        row_target = row.get("target")
        if row_target is not None and row_target not in TARGETS:
            raise ValueError(f"{path}:{number}: target must be one of {', '.join(TARGETS)}, got {row_target!r}")
        if target is not None and row_target is not None and row_target != target:
            continue
        if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)) or row["id"] == "":
            raise ValueError(f'{path}:{number}: "id" must be a non-empty string or an integer, got {row["id"]!r}')
        rid, score = str(row["id"]), row["score"]
        if score is not None and (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
            or not 0 <= score <= 100
        ):
            raise ValueError(
                f"{path}:{number}: id {rid!r}: score must be a number from 0 to 100 or null, got {score!r}"
            )
        if rid in out:
            raise ValueError(
                f"{path}:{number}: id {rid!r} is scored twice (first on line {first[rid]}); keep one score per id"
                + (" (or give each row its target)" if row_target is None else "")
            )
        first[rid] = number
        out[rid] = None if score is None else float(score)
    if not out:
        raise ValueError(f"{path} holds no score" + (f" for target {target}" if target else "") + "; score every reply")
    return out


def combine_readings(readings: Sequence[Mapping[str, tuple[int, int]]], target: str) -> tuple[dict[str, int], int]:
    """The reference labels for ``target`` (``coherent`` or ``trait``): with one reading, its labels; with several,
    the ids every reading labeled and all agree on. Returns ``(id -> label, ids left out for disagreement)``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not readings:
        raise ValueError("no reading given: pass at least one labels file")
    column = 1 if target == "coherent" else 0
    shared = set(readings[0]).intersection(*readings[1:])
    out, disagreed = {}, 0
    for rid in sorted(shared):
        values = {reading[rid][column] for reading in readings}
        if len(values) == 1:
            out[rid] = values.pop()
        else:
            disagreed += 1
    return out, disagreed


@dataclass(frozen=True)
class LabeledReply:
    id: str
    trait: str
    question: str
    reply: str
    split: str
    generation: dict[str, Any]


@dataclass
class LabeledSet:
    """The replies (with their split and generation record) and the readings, by id."""

    replies: list[LabeledReply]
    readings: list[dict[str, tuple[int, int]]]
    reading_names: list[str]

    def rows(self, split: str = "all", *, trait: bool = False) -> list[LabeledReply]:
        """The replies of ``split`` (``dev``, ``test`` or ``all``); ``trait=True`` leaves out the default role's."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [r for r in self.replies if (split == "all" or r.split == split) and not (trait and r.trait == NO_TRAIT)]


def load_labeled_set(replies: str | Path, generation: str | Path, readings: Sequence[str | Path] = ()) -> LabeledSet:
    """Read a labeled set (see the module docstring); every reply needs a generation record with a split, and a
    reading may only label ids of the replies file."""
    records = {str(r["id"]): r for _, r in _read_rows(generation, "generation records")}
    out = []
    for number, row in _read_rows(replies, "replies"):
        rid = str(row["id"])
        record = records.get(rid)
        if record is None or record.get("split") not in ("dev", "test"):
            raise ValueError(f"{generation}: no record with split dev/test for reply {rid!r} ({replies}:{number})")
        for key in ("trait", "question", "reply"):
            if not isinstance(row.get(key), str):
                raise ValueError(
                    f"{replies}:{number}: reply {rid!r} has no string {key!r} (got {row.get(key)!r}); write it as text"
                )
        out.append(LabeledReply(rid, row["trait"], row["question"], row["reply"], record["split"], record))
    if not out:
        raise ValueError(f"{replies} holds no reply; give one JSON object a line (id, trait, question, reply)")
    ids = {r.id for r in out}
    loaded = []
    for path in readings:
        reading = load_readings(path)
        unknown = sorted(set(reading) - ids)
        if unknown:
            raise ValueError(f"{path}: labels ids that are not in {replies}: {', '.join(unknown[:5])}")
        loaded.append(reading)
    return LabeledSet(out, loaded, [Path(p).stem for p in readings])


# ---------------------------------------------------------------------------------------------------------------------
# judges against the reference


@dataclass
class AgreementReport:
    """A judge's agreement, ``pooled`` and per trait, for one target and split, against the reference."""

    judge: str
    target: str
    split: str
    threshold: float
    pooled: Agreement
    per_trait: dict[str, Agreement]
    disagreed: int = 0
    unlabeled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "target": self.target,
            "split": self.split,
            "threshold": self.threshold,
            "disagreed": self.disagreed,
            "unlabeled": self.unlabeled,
            "pooled": self.pooled.to_dict(),
            "per_trait": {k: v.to_dict() for k, v in self.per_trait.items()},
        }


def _agreement_of(
    rows: Sequence[LabeledReply],
    truth: Mapping[str, int],
    scores: Mapping[str, Score],
    threshold: float,
    bootstrap: int,
    seed: int,
) -> Agreement:
    labeled = [r for r in rows if r.id in truth]
    raw = [scores[r.id] for r in labeled]
    predicted = [int(s is not None and s >= threshold) for s in raw]
    values = [-math.inf if s is None else float(s) for s in raw]
    return measure_agreement(
        [truth[r.id] for r in labeled],
        predicted,
        values,
        n_none=sum(s is None for s in raw),
        bootstrap=bootstrap,
        seed=seed,
    )


def evaluate_scores(
    labeled: LabeledSet,
    scores: Mapping[str, Score],
    *,
    target: str,
    split: str = "dev",
    threshold: float = 50.0,
    judge: str = "judge",
    bootstrap: int = 1000,
    seed: int = 0,
) -> AgreementReport:
    """Agreement of a judge's ``scores`` (``id -> 0-100 or None``) with the readings' labels for ``target`` on
    ``split``, pooled and per trait. Every reply of the split must have a score."""
    truth, disagreed = combine_readings(labeled.readings, target)
    rows = labeled.rows(split, trait=target == "trait")
    missing = [r.id for r in rows if r.id not in scores]
    if missing:
        raise ValueError(
            f"no score for {len(missing)} replies of the {split} split (e.g. {missing[0]}); score every reply"
        )
    if not any(r.id in truth for r in rows):
        raise ValueError(
            f"no reply of the {split} split has a reference label for {target} (labeled by every reading"
            + (" and agreed on" if len(labeled.readings) > 1 else "")
            + "): nothing to measure; choose another --split or other readings"
        )
    traits = sorted({r.trait for r in rows})
    return AgreementReport(
        judge,
        target,
        split,
        threshold,
        pooled=_agreement_of(rows, truth, scores, threshold, bootstrap, seed),
        per_trait={
            t: _agreement_of([r for r in rows if r.trait == t], truth, scores, threshold, bootstrap, seed)
            for t in traits
        },
        disagreed=sum(1 for r in rows if r.id not in truth and all(r.id in x for x in labeled.readings)),
        unlabeled=sum(1 for r in rows if not all(r.id in x for x in labeled.readings)),
    )


def reading_agreement(
    labeled: LabeledSet, *, target: str, split: str = "all", bootstrap: int = 1000, seed: int = 0
) -> AgreementReport:
    """How the second reading agrees with the first (as if it were a judge scoring 0 or 100), by the same code as
    a judge's agreement: the inter-reading kappa and the rest, pooled and per trait."""
    if len(labeled.readings) < 2:
        raise ValueError("inter-reading agreement needs two readings (pass two labels files)")
    first, second = labeled.readings[:2]
    column = 1 if target == "coherent" else 0
    scores = {rid: 100.0 * value[column] for rid, value in second.items()}
    reference = LabeledSet(labeled.replies, [first], labeled.reading_names[:1])
    rows = [r for r in labeled.rows(split, trait=target == "trait") if r.id in first and r.id in second]
    subset = LabeledSet(rows, reference.readings, reference.reading_names)
    return evaluate_scores(
        subset,
        scores,
        target=target,
        split=split,
        threshold=50.0,
        judge=f"{labeled.reading_names[1]} vs {labeled.reading_names[0]}",
        bootstrap=bootstrap,
        seed=seed,
    )


def _fmt(value: float, interval: tuple[float, float] | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "  -  "
    if not interval or any(math.isnan(x) for x in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def format_report(report: AgreementReport) -> str:
    """A Markdown table: one row pooled, then one per trait."""
    lines = [
        f"{report.judge}: {report.target} on {report.split} (score >= {report.threshold:g} means yes"
        + (f"; {report.disagreed} rows left out where the readings disagree" if report.disagreed else "")
        + (f"; {report.unlabeled} rows without every reading" if report.unlabeled else "")
        + ")",
        "",
        "| rows | n | labeled yes | judged yes | accuracy | balanced accuracy | kappa | AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in [("pooled", report.pooled), *report.per_trait.items()]:
        i = a.intervals
        lines.append(
            f"| {name} | {a.n} | {a.positives} | {a.predicted_positives} | "
            f"{_fmt(a.accuracy, i.get('accuracy'))} | {_fmt(a.balanced_accuracy, i.get('balanced_accuracy'))}"
            f" | {_fmt(a.kappa, i.get('kappa'))} | {_fmt(a.auroc, i.get('auroc'))} |"
        )
    one_class = [name for name, a in [("pooled", report.pooled), *report.per_trait.items()] if a.one_class]
    if one_class:
        lines += [
            "",
            f"one class only among the labels (every row yes, or every row no) in: {', '.join(one_class)}. "
            "There balanced accuracy and AUROC are undefined (-), and kappa is 1 where the judge agrees on "
            "every row and 0 otherwise: read those rows as agreement on one label, not as a measure of the judge.",
        ]
    if any(not a.n for a in report.per_trait.values()):
        lines += ["", "a row with n = 0 has no reference label (readings disagree or did not label it): - throughout."]
    return "\n".join(lines)
