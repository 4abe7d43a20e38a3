"""Every judge against the readers on the labeled reply set (benchmarks/labels/): the agreement table, and the fit of
the offline coherence judge (chosen on dev, reported once on test).

    .venv/bin/python benchmarks/judges_agreement.py features     # the offline features of every reply (cached)
    .venv/bin/python benchmarks/judges_agreement.py fit          # choose and fit on dev; write the judge's weights
    .venv/bin/python benchmarks/judges_agreement.py scores --judge likelihood|local   # a slow judge's scores (cached)
    .venv/bin/python benchmarks/judges_agreement.py table        # every judge, dev and test, as Markdown
    .venv/bin/python benchmarks/judges_agreement.py bf16         # the default judge read in bfloat16 vs float32

Reference labels: the rows on which both readings agree (the rows they disagree on are counted and left out).
Model selection on dev only: for each candidate feature set and L2 strength, 5-fold cross-validated balanced accuracy
on dev; the best is refit on all of dev and written to persona_lens/judges/offline_weights.json, then evaluated on
test once by ``table``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from persona_lens.judges.evaluate import (
    LabeledSet,
    balanced_accuracy,
    evaluate_scores,
    format_report,
    load_labeled_set,
)
from persona_lens.judges.offline import (
    FEATURES,
    GATE,
    RULE_FEATURES,
    WEIGHTS_FILE,
    LogisticModel,
    fit_logistic,
    reply_features,
)

HERE = Path(__file__).parent / "labels"
FEATURES_FILE = HERE / "features.json"
MODEL = "smollm2-135m-instruct"
CANDIDATES = {
    "rules": RULE_FEATURES,
    "rules+nll": (*RULE_FEATURES, "nll_mean", "nll_p90", "surprise_share"),
    "all": FEATURES,
}
L2 = (0.01, 0.1, 1.0, 10.0)


def labeled_set():
    readings = [HERE / "reading_a.jsonl", HERE / "reading_b.jsonl"]  # the two independent readings
    return load_labeled_set(HERE / "replies.jsonl", HERE / "generation.jsonl", readings)


def contexts_of(trait_name: str) -> tuple:
    from persona_lens import load_trait

    if trait_name == "none":
        return (None,)
    return (None, load_trait(trait_name).prompt_pairs[0].positive)


def _key(trait: str, question: str, reply: str) -> str:
    return hashlib.sha256(json.dumps([trait, question, reply]).encode()).hexdigest()[:16]


def read_feature_cache() -> dict[str, list[float]]:
    cache: dict[str, list[float]] = {}
    for path in sorted(HERE.glob(".features-cache*.json")):
        try:
            cache.update(json.loads(path.read_text()))
        except json.JSONDecodeError:  # being written by a shard right now
            pass
    return cache


def compute_features(args: argparse.Namespace) -> None:
    """Features of every reply of replies.jsonl (or, with --partial, of the generator's cached shards so far),
    cached by (trait, question, reply) in labels/.features-cache.json so a rerun computes only new replies."""
    import persona_lens as pl

    if args.partial:
        rows = []
        for part in sorted(HERE.glob(".phase*-seed0*.json")):
            data = json.loads(part.read_text())
            rows += [(r[0], r[5], t.strip()) for r, t in zip(data["rows"], data["texts"])]
        ids = None
    else:
        labeled = load_labeled_set(HERE / "replies.jsonl", HERE / "generation.jsonl")
        rows = [(r.trait, r.question, r.reply) for r in labeled.replies]
        ids = [r.id for r in labeled.replies]
    if args.rules_only:  # no model: the model features are NaN (only the model-free fit can be chosen)
        x = reply_features(None, [(q, a) for _, q, a in rows])
        x = np.concatenate([x, np.full((len(rows), len(FEATURES) - x.shape[1]), np.nan)], axis=1)
        FEATURES_FILE.write_text(
            json.dumps(
                {
                    "model": None,
                    "features": list(FEATURES),
                    "rows": {i: [None if np.isnan(v) else float(v) for v in row] for i, row in zip(ids, x)},
                }
            )
        )
        print(f"{len(rows)} replies (rule features only) -> {FEATURES_FILE}")
        return
    cache = read_feature_cache()
    shard, shards = (int(x) for x in args.shard.split("/"))
    suffix = "-reverse" if args.reverse else ""
    cache_file = HERE / (
        f".features-cache{suffix}.json" if shards == 1 else f".features-cache-{shard}-of-{shards}{suffix}.json"
    )
    todo = [r for r in rows if _key(*r) not in cache and int(_key(*r), 16) % shards == shard]
    if args.reverse:  # a second process on the same shard, from its end; each skips what the other finished
        todo = todo[::-1]
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}  # this process's own file
    if todo:
        model = pl.load_model(MODEL)
        for start in range(0, len(todo), 40):  # saved as it goes
            done = read_feature_cache()
            chunk = [r for r in todo[start : start + 40] if _key(*r) not in done]
            if not chunk:
                continue
            x = reply_features(model, [(q, a) for _, q, a in chunk], [contexts_of(t) for t, _, _ in chunk])
            cache.update({_key(*r): list(map(float, v)) for r, v in zip(chunk, x)})
            cache_file.write_text(json.dumps(cache))
            print(f"features: {min(start + 40, len(todo))}/{len(todo)}", flush=True)
    cache = read_feature_cache()
    missing = [r for r in rows if _key(*r) not in cache]
    if ids is not None and missing:
        print(f"{len(missing)} replies have no features yet (other shards still running?)")
    elif ids is not None:
        FEATURES_FILE.write_text(
            json.dumps(
                {"model": MODEL, "features": list(FEATURES), "rows": {i: cache[_key(*r)] for i, r in zip(ids, rows)}}
            )
        )
        print(f"{len(rows)} replies -> {FEATURES_FILE}")


def load_features() -> dict[str, np.ndarray]:
    data = json.loads(FEATURES_FILE.read_text())
    if data["features"] != list(FEATURES):
        sys.exit(f"{FEATURES_FILE} has other features; rerun `features`")
    return {k: np.asarray([np.nan if x is None else x for x in v], dtype=float) for k, v in data["rows"].items()}


def reference(labeled, target: str) -> dict[str, int]:
    from persona_lens.judges.evaluate import combine_readings

    return combine_readings(labeled.readings, target)[0]


def cross_validated(x: np.ndarray, y: np.ndarray, names, l2: float, folds: int = 5, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.zeros(len(y), dtype=int)
    for k in range(folds):
        held = order[k::folds]
        train = np.setdiff1d(order, held)
        fit = fit_logistic(x[train], y[train], names, l2=l2)
        predicted[held] = (fit.probability(x[held]) >= 0.5).astype(int)
    return balanced_accuracy(y, predicted)


def fit(args: argparse.Namespace) -> None:
    labeled = labeled_set()
    features = load_features()
    truth = reference(labeled, "coherent")
    dev = [r for r in labeled.rows("dev") if r.id in truth]
    y = np.asarray([truth[r.id] for r in dev])
    results = []
    for name, names in CANDIDATES.items():
        columns = [FEATURES.index(f) for f in names]
        x = np.stack([features[r.id][columns] for r in dev])
        if not np.isfinite(x).all():
            print(f"{name}: features missing (computed with --rules-only): not a candidate")
            continue
        for l2 in L2:
            results.append((cross_validated(x, y, names, l2), name, l2))
            print(f"dev 5-fold CV balanced accuracy {results[-1][0]:.3f}: {name}, l2 {l2:g}")
    best = max(results)
    print(f"chosen on dev: {best[1]}, l2 {best[2]:g} (CV balanced accuracy {best[0]:.3f})")
    out = {
        "source": "benchmarks/judges_agreement.py fit: dev split of benchmarks/labels, rows both readings agree "
        f"on ({len(dev)}), reference = coherent-and-on-topic",
        "models": {},
    }
    for key, names in ((MODEL, CANDIDATES[best[1]]), ("*", RULE_FEATURES)):
        if key == MODEL and best[1] == "rules":
            continue  # the model-free fit is the best: every model uses it
        columns = [FEATURES.index(f) for f in names]
        x = np.stack([features[r.id][columns] for r in dev])
        l2 = best[2] if key == MODEL else max(r for r in results if r[1] == "rules")[2]
        out["models"][key] = {"coherence": fit_logistic(x, y, names, l2=l2).to_dict()}
    WEIGHTS_FILE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {WEIGHTS_FILE}")


def judge_scores(args: argparse.Namespace) -> None:
    """The likelihood or local judge's scores of every reply (coherence; local also trait), cached in labels/."""
    import persona_lens as pl
    from persona_lens.judges import COHERENCE_RUBRIC
    from persona_lens.judges.factory import build_likelihood_coherence
    from persona_lens.judges.local import LocalJudge

    torch.set_num_threads(1)
    labeled = load_labeled_set(HERE / "replies.jsonl", HERE / "generation.jsonl")
    model = pl.load_model(MODEL)
    out = {"coherent": {}, "trait": {}}
    for trait_name in sorted({r.trait for r in labeled.replies}):
        if args.traits and trait_name not in args.traits.split(","):
            continue
        rows = [r for r in labeled.replies if r.trait == trait_name]
        items = [(r.question, r.reply) for r in rows]
        trait = pl.load_trait(trait_name if trait_name != "none" else "pirate")
        if args.judge == "likelihood":
            if trait_name == "none":
                from dataclasses import replace

                trait = replace(trait, prompt_pairs=())
            judge = build_likelihood_coherence(model, trait, HERE / f".calibration-{trait_name}.json", progress=True)
            out["coherent"].update(zip([r.id for r in rows], judge.score(COHERENCE_RUBRIC, items)))
        else:
            judge = LocalJudge(model)
            out["coherent"].update(zip([r.id for r in rows], judge.score(COHERENCE_RUBRIC, items)))
            if trait_name != "none":
                out["trait"].update(zip([r.id for r in rows], judge.score(trait.rubric, items)))
        print(f"{args.judge}: {trait_name} scored", flush=True)
        (HERE / f"scores_{args.judge}.json").write_text(json.dumps(out))  # after each trait


def scores_of(judge: str, labeled, features) -> dict[str, dict[str, float | None]]:
    from persona_lens import load_trait
    from persona_lens.judges.rule import RuleJudge

    if judge in ("likelihood", "local"):
        path = HERE / f"scores_{judge}.json"
        return json.loads(path.read_text()) if path.exists() else {}
    trait_scores = {}
    for r in labeled.replies:
        if r.trait != "none":
            trait_scores[r.id] = RuleJudge(load_trait(r.trait).rule).score("", [(r.question, r.reply)])[0]
    if judge == "rule-dev-threshold":  # each trait's rule shifted so that 50 is its best threshold on dev
        truth = reference(labeled, "trait")
        shifted = {}
        for trait in {r.trait for r in labeled.replies} - {"none"}:
            dev = [r for r in labeled.rows("dev") if r.trait == trait and r.id in truth]
            candidates = sorted({s for r in dev if (s := trait_scores[r.id]) is not None})
            best = max(
                candidates,
                key=lambda t: balanced_accuracy(
                    [truth[r.id] for r in dev],
                    [int(trait_scores[r.id] is not None and trait_scores[r.id] >= t) for r in dev],
                ),
            )
            print(f"rule {trait}: best dev threshold {best:.1f}")
            shifted.update(
                {
                    r.id: None if trait_scores[r.id] is None else trait_scores[r.id] - best + 50
                    for r in labeled.replies
                    if r.trait == trait
                }
            )
        return {"trait": shifted}
    if judge == "rule":
        coherent = {r.id: float(100 * features[r.id][0]) for r in labeled.replies}
    else:
        fits = json.loads(WEIGHTS_FILE.read_text())["models"]
        key = MODEL if judge in ("offline", "offline-full") else "*"
        if key not in fits:
            return {}

        def probability(fit: dict, row: np.ndarray) -> float:
            model = LogisticModel.from_dict(fit)
            return float(model.probability(row[[FEATURES.index(f) for f in model.features]][None])[0])

        coherent = {r.id: 100 * probability(fits[key]["coherence"], features[r.id]) for r in labeled.replies}
        if judge == "offline":  # the shipped cascade: the rule-only fit's probability where it is below the gate
            for r in labeled.replies:
                if (gated := probability(fits["*"]["coherence"], features[r.id])) < GATE:
                    coherent[r.id] = 100 * gated
    return {"coherent": coherent, "trait": trait_scores}


def report_gate(labeled: LabeledSet, features: dict) -> None:
    """How much of each split the cascade's gate takes, and what the full judge and the readers say of those."""
    fits = json.loads(WEIGHTS_FILE.read_text())["models"]
    truth = reference(labeled, "coherent")
    for split in ("dev", "test"):
        rows = labeled.rows(split)
        x = np.array([features[r.id] for r in rows])
        rule = LogisticModel.from_dict(fits["*"]["coherence"])
        full = LogisticModel.from_dict(fits[MODEL]["coherence"])
        gated_p = rule.probability(x[:, [FEATURES.index(f) for f in rule.features]])
        full_p = full.probability(x[:, [FEATURES.index(f) for f in full.features]])
        gated = gated_p < GATE
        print(
            f"gate {GATE:g} on {split}: {gated.sum()} of {len(rows)} replies ({gated.mean():.0%}) skip the model; "
            f"of those the full judge calls {int((full_p[gated] >= 0.5).sum())} coherent (>= 50), the readers "
            f"{sum(truth.get(r.id) == 1 for r, g in zip(rows, gated) if g)} (of "
            f"{sum(r.id in truth for r, g in zip(rows, gated) if g)} they agree on)"
        )


def _cell(a: dict, key: str) -> str:
    value = a.get(key)
    if value is None:
        return "-"
    low, high = a["intervals"].get(key, (None, None))
    return f"{value:.3f}" if low is None else f"{value:.3f} [{low:.2f}, {high:.2f}]"


def table(args: argparse.Namespace) -> None:
    from persona_lens.judges.evaluate import reading_agreement

    labeled = labeled_set()
    features = load_features()
    print(f"readings: {', '.join(labeled.reading_names)}")
    for target in ("coherent", "trait"):
        print(format_report(reading_agreement(labeled, target=target, split="all")))
        print()
    names = {
        "rule": "rule",
        "rule-dev-threshold": "rule, per-trait threshold chosen on dev",
        "likelihood": "likelihood",
        "local": "local (SmolLM2 judging itself)",
        "offline-rules": "offline, model-free fit",
        "offline-full": "offline, every reply read by the model",
        "offline": "offline (the default: gated cascade)",
    }
    report, compact = {}, []
    for judge, title in names.items():
        scores = scores_of(judge, labeled, features)
        for target in ("coherent", "trait"):
            if not scores.get(target) or (target == "trait" and judge not in ("rule", "local", "rule-dev-threshold")):
                continue
            thresholds = (50.0, 75.0) if target == "coherent" and judge.startswith("offline") else (50.0,)
            subset, name = labeled, title
            covered = {r.id for r in labeled.replies if r.id in scores[target]}
            if len(covered) < len(labeled.rows("all", trait=target == "trait")):  # a slow judge run on some traits
                subset = LabeledSet(
                    [r for r in labeled.replies if r.id in covered], labeled.readings, labeled.reading_names
                )
                name = f"{title} ({', '.join(sorted({r.trait for r in subset.replies}))} rows only)"
            for threshold in thresholds:
                for split in ("dev", "test"):
                    r = evaluate_scores(
                        subset, scores[target], target=target, split=split, judge=name, threshold=threshold
                    )
                    report[f"{judge}/{target}/{split}/{threshold:g}"] = d = r.to_dict()
                    p = d["pooled"]
                    compact.append(
                        f"| {name} | {target} | {threshold:g} | {split} | {p['n']} | "
                        f"{_cell(p, 'balanced_accuracy')} | {_cell(p, 'kappa')} | {_cell(p, 'auroc')} | "
                        f"{_cell(p, 'accuracy')} |"
                    )
                    if split == "test":
                        print(format_report(r))
                        print()
    report_gate(labeled, features)
    print("| judge | target | threshold | split | n | balanced accuracy | kappa | AUROC | accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(compact))
    (HERE / "agreement.json").write_text(json.dumps(report, indent=1))


def compare_bf16(args: argparse.Namespace) -> None:
    """The offline judge's ``read_dtype="auto"`` on a CPU with bfloat16 units: the model features of the replies
    that pass the gate, read by a bfloat16 copy (``labels/features_bfloat16.json``, computed once), against the
    float32 features: largest feature change, decisions flipped, and agreement with the readers on each split."""
    import persona_lens as pl
    from persona_lens.judges.evaluate import auroc, cohen_kappa

    torch.set_num_threads(1)
    labeled, features = labeled_set(), load_features()
    fits = json.loads(WEIGHTS_FILE.read_text())["models"]
    rule, full = (LogisticModel.from_dict(fits[k]["coherence"]) for k in ("*", MODEL))
    rule_columns = [FEATURES.index(f) for f in rule.features]
    path = HERE / "features_bfloat16.json"
    passing = [r for r in labeled.replies if rule.probability(features[r.id][rule_columns][None])[0] >= GATE]
    half = json.loads(path.read_text()) if path.exists() else {}
    todo = [r for r in passing if r.id not in half]
    if todo:
        model = pl.load_model(MODEL, dtype="bfloat16")
        for start in range(0, len(todo), 40):
            chunk = todo[start : start + 40]
            x = reply_features(model, [(r.question, r.reply) for r in chunk], [contexts_of(r.trait) for r in chunk])
            half.update({r.id: list(map(float, v)) for r, v in zip(chunk, x)})
            path.write_text(json.dumps(half))
            print(f"bf16 features: {min(start + 40, len(todo))}/{len(todo)}", flush=True)
    x32 = np.array([features[r.id] for r in passing])
    x16 = np.array([half[r.id] for r in passing])
    p32, p16 = full.probability(x32), full.probability(x16)
    print(
        f"{len(passing)} replies pass the gate; largest change per model feature "
        + ", ".join(
            f"{n} {d:.3f}"
            for n, d in zip(FEATURES[len(RULE_FEATURES) :], np.abs(x32 - x16).max(0)[len(RULE_FEATURES) :])
        )
        + f"; decisions flipped: {int(((p32 >= 0.5) != (p16 >= 0.5)).sum())} at 50, "
        f"{int(((p32 >= 0.75) != (p16 >= 0.75)).sum())} at 75"
    )
    truth = reference(labeled, "coherent")
    by_id = {r.id: (a, b) for r, a, b in zip(passing, p32, p16)}
    print("| split | threshold | n | balanced accuracy fp32 / bf16 | kappa fp32 / bf16 | AUROC fp32 / bf16 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for split in ("dev", "test"):
        rows = [r for r in labeled.rows(split) if r.id in truth]
        gated = {r.id: rule.probability(features[r.id][rule_columns][None])[0] for r in rows if r.id not in by_id}
        y = [truth[r.id] for r in rows]
        a = [by_id[r.id][0] if r.id in by_id else gated[r.id] for r in rows]
        b = [by_id[r.id][1] if r.id in by_id else gated[r.id] for r in rows]
        for t in (0.5, 0.75):
            da, db = [int(v >= t) for v in a], [int(v >= t) for v in b]
            print(
                f"| {split} | {100 * t:g} | {len(y)} | {balanced_accuracy(y, da):.3f} / {balanced_accuracy(y, db):.3f} | "
                f"{cohen_kappa(y, da):.3f} / {cohen_kappa(y, db):.3f} | {auroc(y, a):.3f} / {auroc(y, b):.3f} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["features", "fit", "scores", "table", "bf16"])
    parser.add_argument("--judge", choices=["likelihood", "local"], default="likelihood")
    parser.add_argument("--shard", default="0/1", help="features: compute only the replies of shard K/N")
    parser.add_argument("--traits", default="", help="scores: only these traits' rows (comma-separated)")
    parser.add_argument("--reverse", action="store_true", help="features: work through the shard from its end")
    parser.add_argument("--rules-only", action="store_true", help="features: the rule features only (no model)")
    parser.add_argument("--partial", action="store_true", help="features: of the generator's cached shards so far")
    parser.add_argument("--dir", type=Path, default=None, help="the labeled set's folder (default benchmarks/labels)")
    args = parser.parse_args()
    global HERE, FEATURES_FILE
    args.dir = args.dir or HERE
    HERE, FEATURES_FILE = args.dir, args.dir / "features.json"
    torch.set_num_threads(1)
    actions = {"features": compute_features, "fit": fit, "scores": judge_scores, "table": table, "bf16": compare_bf16}
    actions[args.action](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
