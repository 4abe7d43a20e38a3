"""Extraction replies per second: an OpenAI-compatible engine vs in-process generation, same model and settings.

    scripts/serve_transformers.sh smollm2-135m-instruct 8765      # or any server of the same model
    python benchmarks/engine_replies.py --engine http://127.0.0.1:8765 [--replies 8] [--tokens 24] [--batch 8]

The prompts are extraction-style (a persona system prompt and a question); replies are greedy, so the two paths
can also be compared reply by reply (the count of identical replies is printed). In-process: our ``generate`` at
``--batch``; engine: ``--concurrency`` requests in flight, the replies located in the re-tokenized conversation.
Prints the load average: these machines are shared.
"""

from __future__ import annotations

import argparse
import os
import time

from persona_lens.core.chat import make_messages
from persona_lens.core.engine import OpenAIEngine
from persona_lens.core.generation import generate
from persona_lens.core.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--replies", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    engine = OpenAIEngine(args.engine, concurrency=args.concurrency)
    engine.check_matches(model)
    prompts = [
        make_messages(f"Question {i}: what should I do on a rainy day?", system="You are a pirate.")
        for i in range(args.replies)
    ]
    print(f"load average before: {os.getloadavg()}")
    start = time.perf_counter()
    local = generate(model, prompts, max_new_tokens=args.tokens, batch_size=args.batch)
    t_local = time.perf_counter() - start
    start = time.perf_counter()
    served = engine.generate(model, prompts, max_new_tokens=args.tokens)
    t_engine = time.perf_counter() - start
    same = sum(a == b for a, b in zip(local.response_ids, served.response_ids))
    n = len(prompts)
    print(f"model {args.model}, {n} greedy replies x {args.tokens} new tokens; engine {engine.model}")
    print("| path | time | replies/s | ratio |\n|---|---|---|---|")
    print(f"| in-process generate, batch {args.batch} | {t_local:.1f} s | {n / t_local:.3f} | 1.00 |")
    print(
        f"| engine, {args.concurrency} requests in flight | {t_engine:.1f} s | {n / t_engine:.3f} | "
        f"{t_local / t_engine:.2f} |"
    )
    print(f"identical replies: {same}/{n}; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
