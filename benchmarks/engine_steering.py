"""Steered sweep throughput and activation reads: in-process HF generation vs the vLLM engine, side by side.

    .venv-vllm/bin/python benchmarks/engine_steering.py                       # SmolLM2 on this CPU
    python benchmarks/engine_steering.py --model Qwen/Qwen2.5-7B-Instruct --device cuda --dtype bfloat16
                                                                              # a GPU with vLLM (benchmarks/gpu/)

A sweep cell is one persona vector at one layer with one coefficient per reply (a coefficient sweep in one call):
in-process that is ``steer(model, v, coef=tensor)`` around ``generate(batch_size=B)``; on the engine each request
carries its own coefficient in one engine batch. At each batch size B (default 1, 16, 64) both paths make
``max(B, --min-replies)`` greedy replies of exactly ``--tokens`` new tokens (no early stop, so tokens/s counts the
same tokens), and the count of identical replies is printed (greedy: they should all be). Then the activation reads
of extraction (``collect_activations``: response / prompt / last-prompt means at every layer) on ``--reads``
conversations. Engine start time is printed apart (a one-off per run). The machine's load average is printed:
these machines are shared.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_conversation, make_messages
from persona_lens.core.controls import random_directions
from persona_lens.core.generation import generate
from persona_lens.core.hooks import steer
from persona_lens.core.models import load_model
from persona_lens.core.norms import median_residual_norms, raw_coefficient
from persona_lens.core.vllm_engine import VLLMEngine

QUESTIONS = [
    "What should I do on a rainy day?",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "Can you recommend a good book?",
    "How does a bicycle work?",
    "What is your favourite season?",
    "How do I learn a new language?",
    "What should I pack for a trip?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--layer", type=int, default=None, help="steered layer (default: half the depth)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--min-replies", type=int, default=4)
    parser.add_argument("--reads", type=int, default=64)
    parser.add_argument("--tensor-parallel", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in-process (default torch's; vLLM's CPU worker uses one core)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    layer = args.layer or int(model.cfg.n_layers) // 2
    print(
        f"model {args.model} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.dtype}) on "
        f"{args.device}; torch threads {torch.get_num_threads()}; layer {layer}; {args.tokens} new tokens"
    )
    print(f"load average before: {os.getloadavg()}")
    start = time.perf_counter()
    engine = VLLMEngine(
        model, max_num_seqs=max(args.batches), max_model_len=1024, tensor_parallel_size=args.tensor_parallel
    )
    print(f"vLLM engine start: {time.perf_counter() - start:.0f} s (once per run)")
    v = random_directions(int(model.cfg.d_model), 1, seed=0)[0]
    norms = median_residual_norms(model)
    print("| batch | path | replies | time | replies/s | tokens/s | ratio | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        n = max(batch, args.min_replies)
        convs = [make_messages(QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]
        relative = torch.linspace(-1.0, 1.0, n)
        raw = raw_coefficient(relative, v.norm(), norms[layer])
        start = time.perf_counter()
        with steer(model, v, layer=layer, coef=raw, raw=True):
            ours = generate(model, convs, max_new_tokens=args.tokens, batch_size=batch, stop_at_eos=False)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs_ids = []
        for part in range(0, n, batch):
            ops = [
                engine.steer_ops(v, layer=layer, coef=float(raw[i]), raw=True)
                for i in range(part, min(part + batch, n))
            ]
            out = engine.generate(
                model, convs[part : part + batch], max_new_tokens=args.tokens, ops=ops, stop_at_eos=False
            )
            theirs_ids += out.response_ids
        t_engine = time.perf_counter() - start
        same = sum(a == b for a, b in zip(ours.response_ids, theirs_ids))
        tokens = n * args.tokens
        print(f"| {batch} | in-process HF | {n} | {t_ours:.1f} s | {n / t_ours:.2f} | {tokens / t_ours:.1f} | 1.00 | |")
        print(
            f"| {batch} | vLLM engine | {n} | {t_engine:.1f} s | {n / t_engine:.2f} | {tokens / t_engine:.1f} | "
            f"{t_ours / t_engine:.2f} | {same}/{n} |",
            flush=True,
        )
    encoded = [
        encode_conversation(
            model.tokenizer,
            make_messages(QUESTIONS[i % len(QUESTIONS)]),
            f"Here is my answer number {i}: " + "it depends on the weather and the mood. " * 3,
        )
        for i in range(args.reads)
    ]
    start = time.perf_counter()
    ours_acts = collect_activations(model, encoded, batch_size=16, progress=False)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs_acts = engine.collect_activations(encoded, batch_size=64)
    t_engine = time.perf_counter() - start
    worst = float(
        (theirs_acts.response_mean - ours_acts.response_mean).abs().max() / ours_acts.response_mean.abs().max()
    )
    n_tokens = sum(len(e.input_ids) for e in encoded)
    print(f"\nactivation reads, {args.reads} conversations ({n_tokens} tokens), every layer, 3 reductions")
    print("| path | time | conversations/s | ratio | max |diff| / max |value| |\n|---|---|---|---|---|")
    print(f"| in-process collect_activations, batch 16 | {t_ours:.1f} s | {args.reads / t_ours:.2f} | 1.00 | |")
    print(f"| vLLM engine | {t_engine:.1f} s | {args.reads / t_engine:.2f} | {t_ours / t_engine:.2f} | {worst:.1e} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
