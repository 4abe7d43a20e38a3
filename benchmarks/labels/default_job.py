"""The default job's result for a reader: its chosen cell's replies and the system-prompted anchor's, blinded.

    .venv/bin/python benchmarks/labels/default_job.py export [--sweep RUN/sweep-none-response ...]
    .venv/bin/python benchmarks/labels/default_job.py report

``export`` (one or more sweeps: other traits, or a replication of the chosen cell with a fresh seed, whose one
steered cell is read) writes ``default_job.jsonl`` (what the reader sees: ``id``, ``trait``, ``trait_definition``, ``question``,
``reply``; shuffled, seeded) and ``default_job_generation.jsonl`` (``id`` -> ``condition``: steered or prompted, the
cell, and the judges' scores). ``report`` reads the readers' ``default_job_reading*.jsonl`` and prints, for the chosen
cell and for the prompted anchor, the reader-labeled rate of replies that express the trait AND are coherent,
beside the same rate by the job's own judges (the thresholds of the sweep).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SWEEP = Path("runs/smollm2-135m-instruct/enthusiastic/sweep-none-response")


def _cell_of(summary: dict, sweep: Path) -> str:
    """The sweep's chosen cell; for a sweep of one steered cell (a replication with a fresh seed), that cell."""
    config, chosen = summary["config"], summary["chosen"]
    if chosen is None:
        cells = [c for c in summary["cells"] if c.get("layer") is not None]
        if len(cells) != 1:
            raise SystemExit(f"{sweep}: the job chose no cell; nothing to read")
        chosen = cells[0]
    return f"L{chosen['layer']}|{config['coefficient_mode']}{chosen['coef_relative']:g}"


def export(sweeps: list[Path], seed: int) -> None:
    """The chosen cell's and the prompted anchor's replies of every sweep, shuffled together and blinded."""
    from generate_replies import DEFINITIONS

    picked, sources = [], {}
    for sweep in sweeps:
        summary = json.loads((sweep / "sweep.json").read_text())
        config, trait = summary["config"], summary["trait"]
        cell = _cell_of(summary, sweep)
        run = f"{trait}/seed{config['seed']}"
        records = [json.loads(line) for line in (sweep / "scored.jsonl").read_text().splitlines() if line.strip()]
        chosen = [(r, "steered") for r in records if r.get("cell") == cell]
        prompted = [(r, "prompted") for r in records if r.get("cell") == "prompted"]
        if not chosen or not prompted:
            raise SystemExit(f"{sweep}: no replies of cell {cell} or of the prompted anchor (an older job?)")
        picked += [(r, c, run, trait, config) for r, c in chosen + prompted]
        sources[run] = {"sweep": str(sweep), "cell": cell, "judges": summary.get("judges")}
    random.Random(seed).shuffle(picked)
    seen, generation = [], []
    for index, (record, condition, run, trait, config) in enumerate(picked):
        rid = f"d{index:03d}"
        seen.append(
            {
                "id": rid,
                "trait": trait,
                "trait_definition": DEFINITIONS.get(trait, trait),
                "question": record["question_text"],
                "reply": record["response"],
            }
        )
        generation.append(
            {
                "id": rid,
                "run": run,
                "condition": condition,
                "cell": record["cell"],
                "system": record.get("system"),
                "trait_score": record.get("trait_score"),
                "coherence": record.get("coherence"),
                "trait_threshold": config["trait_threshold"],
                "coherence_threshold": config["coherence_threshold"],
            }
        )
    (HERE / "default_job.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in seen))
    (HERE / "default_job_generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generation))
    (HERE / "default_job_sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    for run, source in sources.items():
        n = {c: sum(g["run"] == run and g["condition"] == c for g in generation) for c in ("steered", "prompted")}
        print(f"{run}: {n['steered']} replies of cell {source['cell']}, {n['prompted']} prompted")
    print(f"{len(seen)} replies -> {HERE / 'default_job.jsonl'}")


def _read(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def report(readings: list[Path]) -> None:
    """Per run and condition: each reading's "trait AND coherent" rate beside the judges'; then how the readings
    agree with each other and with the judges' decisions, reply by reply (both labels)."""
    from persona_lens.judges.evaluate import balanced_accuracy, cohen_kappa

    generation = _read(HERE / "default_job_generation.jsonl")
    read = {path.stem.removeprefix("default_job_"): _read(path) for path in readings}
    names = list(read)
    print(
        "| run | condition | cell | n | "
        + " | ".join(f"{n}: trait AND coherent (trait, coherent)" for n in names)
        + " | judges: both (trait, coherent) |"
    )
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |")

    def judged(g: dict) -> tuple[int, int]:
        return int((g["trait_score"] or 0) >= g["trait_threshold"]), int(
            (g["coherence"] or 0) >= g["coherence_threshold"]
        )

    def rates(pairs: list[tuple[int, int]]) -> str:
        n = max(1, len(pairs))
        return (
            f"{sum(t and c for t, c in pairs) / n:.2f} ({sum(t for t, _ in pairs) / n:.2f}, "
            f"{sum(c for _, c in pairs) / n:.2f})"
        )

    for run in sorted({g["run"] for g in generation.values()}):
        for condition in ("steered", "prompted"):
            rows = [g for g in generation.values() if g["run"] == run and g["condition"] == condition]
            cells = [
                rates([(r[g["id"]]["trait_expressed"], r[g["id"]]["coherent"]) for g in rows]) for r in read.values()
            ]
            print(
                f"| {run} | {condition} | {rows[0]['cell'] if rows else '-'} | {len(rows)} | "
                + " | ".join(cells)
                + f" | {rates([judged(g) for g in rows])} |"
            )
    ids = sorted(generation)
    for label, index in (("trait_expressed", 0), ("coherent", 1)):
        judges = [judged(generation[i])[index] for i in ids]
        line = []
        if len(names) == 2:
            a, b = ([read[n][i][label] for i in ids] for n in names)
            line.append(f"{names[1]} vs {names[0]} kappa {cohen_kappa(a, b):.3f}")
        for n in names:
            truth = [read[n][i][label] for i in ids]
            line.append(f"judges vs {n}: balanced accuracy {balanced_accuracy(truth, judges):.3f}")
        print(f"{label}: " + "; ".join(line))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "report"])
    parser.add_argument("--sweep", type=Path, action="append", help=f"a sweep folder (repeatable; default {SWEEP})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reading", type=Path, action="append", help="report: a reader's labels (repeatable)")
    args = parser.parse_args()
    if args.action == "export":
        export(args.sweep or [SWEEP], args.seed)
    else:
        report(args.reading or sorted(HERE.glob("default_job_reading*.jsonl")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
