"""The likelihood coherence judge's NLL pass: replies sharing their prompt's forward pass (KV cache) vs one full
forward per reply (prompt + reply, batched by equal total length: the judge's v1 layout).

    .venv/bin/python benchmarks/likelihood_judge.py [--model smollm2-135m-instruct] [--questions 10] [--replies 8]

Replies: the model's own sampled replies to the first ``--questions`` of the pirate trait's evaluation questions,
``--replies`` each (as in a sweep, where every cell answers the same questions). Both layouts are timed in
alternation, three rounds each, on the same rows; prints the times, the ratio and the largest difference between
the two layouts' NLLs (float rounding only).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from persona_lens import load_model, load_trait
from persona_lens.core.chat import make_messages
from persona_lens.core.generation import generate
from persona_lens.judges import likelihood as L


@torch.no_grad()
def full_row_nlls(model, rows, batch_size: int = 16) -> list[float]:
    """Judge v1: each row's prompt and reply in one forward, batched by equal total length (the reference)."""
    out = [math.nan] * len(rows)
    by_length: dict[int, list[int]] = {}
    for index, (prompt, response) in enumerate(rows):
        by_length.setdefault(len(prompt) + len(response), []).append(index)
    for length in sorted(by_length):
        members = by_length[length]
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            ids = torch.tensor([[*rows[i][0], *rows[i][1]] for i in chunk], dtype=torch.long)
            keep = max(len(rows[i][1]) for i in chunk) + 1
            logp = model(ids, logits_to_keep=keep)[:, :-1].float().log_softmax(-1)
            for row, i in enumerate(chunk):
                n = len(rows[i][1])
                picked = logp[row, keep - 1 - n :].gather(-1, torch.tensor(rows[i][1])[:, None])
                out[i] = float(-picked.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--replies", type=int, default=8)
    parser.add_argument("--new", type=int, default=40)
    args = parser.parse_args()
    model = load_model(args.model)
    questions = list(load_trait("pirate").eval_questions[: args.questions])
    plan = [q for q in questions for _ in range(args.replies)]
    replies = generate(
        model,
        [make_messages(q) for q in plan],
        max_new_tokens=args.new,
        temperature=1.0,
        seeds=list(range(len(plan))),
        batch_size=64,
    )
    rows = [(L._prompt_ids(model, q, None), ids) for q, ids in zip(plan, replies.response_ids) if ids]
    times: dict[str, list[float]] = {"full rows (v1)": [], "shared prompt": []}
    for _ in range(3):
        start = time.perf_counter()
        reference = full_row_nlls(model, rows)
        times["full rows (v1)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        shared = L.response_nlls(model, rows)
        times["shared prompt"].append(time.perf_counter() - start)
    tokens = sum(len(p) + len(r) for p, r in rows)
    print(
        f"{len(rows)} replies to {len(questions)} questions, {tokens} tokens, torch threads {torch.get_num_threads()}"
    )
    for name, values in times.items():
        print(f"  {name:15s} best {min(values):6.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    print(
        f"shared prompt / full rows: {min(times['full rows (v1)']) / min(times['shared prompt']):.2f}x faster; "
        f"max |NLL difference| {max(abs(a - b) for a, b in zip(reference, shared)):.2e} nats"
    )


if __name__ == "__main__":
    main()
