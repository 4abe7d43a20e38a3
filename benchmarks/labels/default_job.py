"""The default job's result for a reader: its chosen cell's replies and the system-prompted anchor's, blinded.

    .venv/bin/python benchmarks/labels/default_job.py export [--sweep RUN/sweep-none-response]
    .venv/bin/python benchmarks/labels/default_job.py report

``export`` writes ``default_job.jsonl`` (what the reader sees: ``id``, ``trait``, ``trait_definition``, ``question``,
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
SWEEP = Path("runs/smollm2-135m-instruct/pirate/sweep-none-response")


def export(sweep: Path, seed: int) -> None:
    from generate_replies import DEFINITIONS

    summary = json.loads((sweep / "sweep.json").read_text())
    chosen = summary["chosen"]
    if chosen is None:
        raise SystemExit(f"{sweep}: the job chose no cell; nothing to read")
    config = summary["config"]
    cell = f"L{chosen['layer']}|{config['coefficient_mode']}{chosen['coef_relative']:g}"
    records = [json.loads(line) for line in (sweep / "scored.jsonl").read_text().splitlines() if line.strip()]
    picked = [(r, "steered") for r in records if r.get("cell") == cell]
    picked += [(r, "prompted") for r in records if r.get("cell") == "prompted"]
    if not picked or not any(c == "prompted" for _, c in picked):
        raise SystemExit(f"{sweep}: no replies of cell {cell} or of the prompted anchor (an older job?)")
    random.Random(seed).shuffle(picked)
    trait = summary["trait"]
    seen, generation = [], []
    for index, (record, condition) in enumerate(picked):
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
                "condition": condition,
                "cell": record["cell"],
                "system": record.get("system"),
                "trait_score": record.get("trait_score"),
                "coherence": record.get("coherence"),
                "trait_threshold": config["trait_threshold"],
                "coherence_threshold": config["coherence_threshold"],
                "judges": summary.get("judges"),
            }
        )
    (HERE / "default_job.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in seen))
    (HERE / "default_job_generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generation))
    print(
        f"{len(seen)} replies ({sum(c == 'steered' for _, c in picked)} of cell {cell}, "
        f"{sum(c == 'prompted' for _, c in picked)} prompted) -> {HERE / 'default_job.jsonl'}"
    )


def report() -> None:
    generation = {r["id"]: r for r in map(json.loads, (HERE / "default_job_generation.jsonl").read_text().splitlines())}
    reading = {r["id"]: r for r in map(json.loads, (HERE / "default_job_reading.jsonl").read_text().splitlines())}
    for condition in ("steered", "prompted"):
        rows = [g for g in generation.values() if g["condition"] == condition]
        read = [reading[g["id"]] for g in rows if g["id"] in reading]
        both_reader = sum(r["trait_expressed"] and r["coherent"] for r in read) / max(1, len(read))
        both_judges = sum(
            (g["trait_score"] or 0) >= g["trait_threshold"] and (g["coherence"] or 0) >= g["coherence_threshold"]
            for g in rows
        ) / max(1, len(rows))
        trait_reader = sum(r["trait_expressed"] for r in read) / max(1, len(read))
        coherent_reader = sum(r["coherent"] for r in read) / max(1, len(read))
        print(
            f"{condition:8s} ({rows[0]['cell'] if rows else '-'}): trait AND coherent, reader {both_reader:.2f} "
            f"(trait {trait_reader:.2f}, coherent {coherent_reader:.2f}; {len(read)} of {len(rows)} read), "
            f"judges {both_judges:.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "report"])
    parser.add_argument("--sweep", type=Path, default=SWEEP)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    export(args.sweep, args.seed) if args.action == "export" else report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
