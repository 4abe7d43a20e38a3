"""The default job's result for a reader: its chosen cell's replies and the system-prompted anchor's, blinded.

    .venv/bin/python benchmarks/labels/default_job.py export [--sweep RUN/sweep-none-response ...]
    .venv/bin/python benchmarks/labels/default_job.py report

``export`` (one or more sweeps: other traits, or a replication of the chosen cell with a fresh seed, whose one
steered cell is read) writes ``default_job.jsonl`` (what the reader sees: ``id``, ``trait``, ``trait_definition``, ``question``,
``reply``; shuffled, seeded) and ``default_job_generation.jsonl`` (``id`` -> ``condition``: steered or prompted, the
cell, and the judges' scores). ``report`` reads the reader's ``default_job_reading.jsonl`` and prints, for the chosen
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


def report() -> None:
    generation = {r["id"]: r for r in map(json.loads, (HERE / "default_job_generation.jsonl").read_text().splitlines())}
    reading = {r["id"]: r for r in map(json.loads, (HERE / "default_job_reading.jsonl").read_text().splitlines())}
    print(
        "| run | condition | cell | n read | reader: trait AND coherent | reader: trait | reader: coherent | judges: both |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in sorted({g["run"] for g in generation.values()}):
        for condition in ("steered", "prompted"):
            rows = [g for g in generation.values() if g["run"] == run and g["condition"] == condition]
            read = [reading[g["id"]] for g in rows if g["id"] in reading]
            n = max(1, len(read))
            both_judges = sum(
                (g["trait_score"] or 0) >= g["trait_threshold"] and (g["coherence"] or 0) >= g["coherence_threshold"]
                for g in rows
            ) / max(1, len(rows))
            print(
                f"| {run} | {condition} | {rows[0]['cell'] if rows else '-'} | {len(read)} of {len(rows)} | "
                f"{sum(r['trait_expressed'] and r['coherent'] for r in read) / n:.2f} | "
                f"{sum(r['trait_expressed'] for r in read) / n:.2f} | {sum(r['coherent'] for r in read) / n:.2f} | "
                f"{both_judges:.2f} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "report"])
    parser.add_argument("--sweep", type=Path, action="append", help=f"a sweep folder (repeatable; default {SWEEP})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    export(args.sweep or [SWEEP], args.seed) if args.action == "export" else report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
