"""Generate the labeled reply set's replies: SmolLM2-135M-Instruct answering everyday questions unsteered,
system-prompted, steered along four traits' persona vectors (several layers, strengths from fluent to word salad)
and along random directions of the same norms, plus the default role (no trait).

    .venv/bin/python benchmarks/labels/generate_replies.py [--seed 0] [--out benchmarks/labels]

Writes, next to this script:

* ``replies.jsonl`` -- what readers see, blinded and shuffled by ``--seed``: ``id``, ``trait``, ``trait_definition``,
  ``question``, ``reply`` (no condition, layer, coefficient or judge score);
* ``generation.jsonl`` -- per ``id``: ``condition`` (unsteered, prompted, steered, random), ``layer``, ``coef``
  (relative: the added vector's norm is coef * the layer's median residual norm), ``system`` prompt, ``seed`` and
  ``split`` (dev/test, by question, fixed by ``--seed``);
* ``settings.json`` -- every setting of the run (model, questions, sampling, vectors' extraction), so the set can be
  regenerated bit for bit on the same software.

Vectors: per trait, the persona vector is the mean response activation of the model's own replies under the trait's
first positive system prompt minus under its first negative one (:func:`persona_lens.contrast_vector`, no judge
filter: every reply kept), on the trait's extraction questions (disjoint from the reply set's questions).
Random directions: :func:`persona_lens.core.controls.random_like` of each trait's vector (row norms equal), and,
since steering uses relative coefficients, the same coefficient adds a vector of the same norm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path

import torch

import persona_lens as pl
from persona_lens.core.chat import make_messages
from persona_lens.core.controls import random_like
from persona_lens.core.io import write_json_atomic
from persona_lens.core.norms import median_residual_norms, reference_conversations

TRAITS = ("pirate", "enthusiastic", "french", "shouting")
#: One sentence per trait: what a reader looks for.
DEFINITIONS = {
    "pirate": "The reply talks like a storybook pirate (arr, ahoy, matey, ye, aye, me hearties, dropped endings, "
    "talk of ships, treasure and the sea).",
    "enthusiastic": 'The reply is excited and delighted, exclaiming as it goes ("I love that! It\'s amazing!").',
    "french": "The reply is written in French (mostly French words), not English.",
    "shouting": "The reply is written in capital letters, as if yelling (most letters uppercase).",
    "none": "No trait: label coherence only (trait_expressed is always 0 for these rows).",
}
LAYERS = (8, 16, 24)
COEFS = (0.25, 0.5, 1.0, 2.0)
RANDOM_COEFS = (0.5, 2.0)
DEFAULT_COEFS = (0.25, 0.5, 1.0, 2.0)
N_UNSTEERED, N_PROMPTED, N_STEERED, N_RANDOM, N_DEFAULT = 15, 20, 6, 4, 5


def generate_rows(model, rows, norms, directions, args, sampling, *, desc, offset=0) -> list[str]:
    """Replies to ``rows`` in one generate call: one steering hook per (direction, layer) in use, each with a
    per-conversation coefficient that is zero on the rows it does not steer (seeds: the rows' indices in the whole
    set, ``offset + i`` or ``offset[i]``)."""
    convs = [make_messages(r[5], system=r[6]) for r in rows]
    index = list(offset) if isinstance(offset, list) else [offset + i for i in range(len(rows))]
    seeds = [args.seed * 1_000_003 + i for i in index]
    with contextlib.ExitStack() as stack:
        for key in sorted({(r[4], r[2]) for r in rows if r[4] is not None}):
            coefs = torch.tensor([float(r[3]) if (r[4], r[2]) == key else 0.0 for r in rows])
            stack.enter_context(pl.steer(model, directions[key[0]], layer=key[1], coef=coefs, residual_norms=norms))
        out = pl.generate(model, convs, seeds=seeds, batch_size=args.batch, progress=True, desc=desc, **sampling)
    return out.texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new", type=int, default=40, help="max new tokens per reply (default 40)")
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--assemble", action="store_true", help="write the set from the finished shards")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU two threads cost 10x the CPU time)",
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="K/N",
        help="generate only the steered rows with index %% N == K in this process (run N processes, "
        "one of them with --assemble; shards > 0 wait for shard 0's unsteered replies)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shard, shards = (int(x) for x in args.shard.split("/"))
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = pl.load_model(args.model)
    traits = {name: pl.load_trait(name) for name in TRAITS}
    questions = list(traits["pirate"].eval_questions)
    if any(list(t.eval_questions) != questions for t in traits.values()):
        print("the traits' evaluation questions differ; this script assumes one shared list", file=sys.stderr)
        return 2
    order = list(questions)
    random.Random(args.seed).shuffle(order)
    split = {q: ("dev" if i < len(order) // 2 else "test") for i, q in enumerate(order)}
    norms = median_residual_norms(model, reference_conversations(model))
    sampling = {"max_new_tokens": args.new, "temperature": 1.0, "top_p": 1.0}

    # every reply to generate: (trait, condition, layer, coef, direction, question, system)
    phase1: list[tuple] = []
    for name, trait in traits.items():
        positive = [p.positive for p in trait.prompt_pairs]
        phase1 += [
            (name, "unsteered", None, None, None, questions[(i + 3 * len(phase1)) % len(questions)], None)
            for i in range(N_UNSTEERED)
        ]
        phase1 += [
            (name, "prompted", None, None, None, q, positive[(i + k) % len(positive)])
            for k in range(N_PROMPTED // len(questions))
            for i, q in enumerate(questions)
        ]
    phase1 += [("none", "unsteered", None, None, None, q, None) for q in questions]
    cache = args.out / f".phase1-seed{args.seed}.json"  # a rerun after a failure in phase 2 starts there
    while shard > 0 and not cache.exists():
        time.sleep(10)
    if cache.exists() and json.loads(cache.read_text())["rows"] == [list(r) for r in phase1]:
        texts1 = json.loads(cache.read_text())["texts"]
    else:
        texts1 = generate_rows(model, phase1, norms, {}, args, sampling, desc="unsteered and prompted replies")
        write_json_atomic(cache, {"rows": [list(r) for r in phase1], "texts": texts1})
    # each trait's vector: its prompted replies minus the unsteered replies (all of them), response-averaged
    vectors: dict[str, torch.Tensor] = {}
    for name in TRAITS:
        pos = [
            [*make_messages(r[5], system=r[6]), {"role": "assistant", "content": t}]
            for r, t in zip(phase1, texts1)
            if r[0] == name and r[1] == "prompted" and t.strip()
        ]
        neg = [
            [*make_messages(r[5]), {"role": "assistant", "content": t}]
            for r, t in zip(phase1, texts1)
            if r[1] == "unsteered" and t.strip()
        ]
        vectors[name] = pl.contrast_vector(model, pos, neg, trait=name, batch_size=32).vectors
    directions = dict(vectors)
    for t_index, name in enumerate([*TRAITS, "none"]):
        base = vectors[name if name != "none" else "pirate"]
        directions[f"random:{name}"] = random_like(base, 1, seed=args.seed + 101 + t_index)[0]
    phase2: list[tuple] = []
    for name in TRAITS:
        for layer in LAYERS:
            phase2 += [
                (name, "steered", layer, coef, name, questions[(c * 7 + layer + r) % len(questions)], None)
                for c, coef in enumerate(COEFS)
                for r in range(N_STEERED)
            ]
            phase2 += [
                (
                    name,
                    "random",
                    layer,
                    coef,
                    f"random:{name}",
                    questions[(c * 7 + layer + r + 3) % len(questions)],
                    None,
                )
                for c, coef in enumerate(RANDOM_COEFS)
                for r in range(N_RANDOM)
            ]
    for layer in LAYERS:
        phase2 += [
            ("none", "random", layer, coef, "random:none", questions[(c * 3 + layer + r) % len(questions)], None)
            for c, coef in enumerate(DEFAULT_COEFS)
            for r in range(N_DEFAULT)
        ]
    texts2 = [""] * len(phase2)
    for k in range(shards):
        part = args.out / f".phase2-seed{args.seed}-{k}-of-{shards}.json"
        mine = [i for i in range(len(phase2)) if i % shards == k]
        key = [list(phase2[i]) for i in mine]
        if k == shard and not (part.exists() and json.loads(part.read_text())["rows"] == key):
            done = generate_rows(
                model,
                [phase2[i] for i in mine],
                norms,
                directions,
                args,
                sampling,
                desc=f"steered replies (shard {k}/{shards})",
                offset=[len(phase1) + i for i in mine],
            )
            write_json_atomic(part, {"rows": key, "texts": done})
        elif k != shard:
            if not args.assemble:
                continue
            while not part.exists():  # another process generates this shard
                time.sleep(10)
        saved = json.loads(part.read_text())
        if saved["rows"] != key:
            print(f"{part} holds other rows (an older plan): delete it and rerun its shard", file=sys.stderr)
            return 2
        for i, text in zip(mine, saved["texts"]):
            texts2[i] = text
    if shards > 1 and not args.assemble:
        print(f"shard {shard}/{shards} done; the process with --assemble writes the set")
        return 0
    rows = []
    for index, (row, text) in enumerate(zip([*phase1, *phase2], [*texts1, *texts2])):
        trait, condition, layer, coef, direction, question, system = row
        rows.append(
            {
                "trait": trait,
                "condition": condition,
                "layer": layer,
                "coef": coef,
                "direction": direction,
                "system": system,
                "seed": args.seed * 1_000_003 + index,
                "question": question,
                "reply": text.strip(),
                "split": split[question],
            }
        )
    random.Random(args.seed + 1).shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    blinded, records = [], []
    for index, row in enumerate(rows):
        rid = f"r{index:04d}"
        blinded.append(
            {
                "id": rid,
                "trait": row["trait"],
                "trait_definition": DEFINITIONS[row["trait"]],
                "question": row["question"],
                "reply": row["reply"],
            }
        )
        records.append(
            {
                "id": rid,
                **{k: row[k] for k in ("trait", "condition", "layer", "coef", "direction", "system", "seed", "split")},
            }
        )
    (args.out / "replies.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in blinded), encoding="utf-8"
    )
    (args.out / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    write_json_atomic(
        args.out / "settings.json",
        {
            "model": args.model,
            "seed": args.seed,
            "sampling": sampling,
            "batch_size": args.batch,
            "questions": questions,
            "split": split,
            "layers": list(LAYERS),
            "coefs": list(COEFS),
            "random_coefs": list(RANDOM_COEFS),
            "default_coefs": list(DEFAULT_COEFS),
            "vectors": "per trait: mean response activation of its prompted replies minus of all unsteered replies",
            "median_residual_norm": [float(x) for x in norms],
            "counts": {
                "unsteered": N_UNSTEERED,
                "prompted": N_PROMPTED,
                "steered": N_STEERED,
                "random": N_RANDOM,
                "default_random": N_DEFAULT,
            },
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "shards": args.shard,
            "seconds": round(time.perf_counter() - started, 1),
            "n_replies": len(rows),
        },
    )
    print(f"{len(rows)} replies in {time.perf_counter() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
