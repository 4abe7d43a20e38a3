"""The default's per-token percentiles along the axis and the capping controls' random directions (what `space
build` stores for `space cap`): one hook per layer projecting on every direction at once (persona_lens now) beside
one RecordProjection hook per direction and layer (before), on the same conversations, in one run.

    PYTHONPATH=. python benchmarks/space_quantiles.py [--model smollm2-135m-instruct] [--directions 11]

Prints both times, their ratio and the largest difference between the two results (they read the same residuals).
"""

from __future__ import annotations

import argparse
import time

import torch

import persona_lens as pl
from persona_lens.core.chat import collate, encode_conversation, make_messages
from persona_lens.core.controls import random_like
from persona_lens.core.hooks import RecordProjection, TokenLayout, install_hooks, token_layout
from persona_lens.core.layers import hook_name
from persona_lens.core.vectors import unit_rows
from persona_lens.experiments.space import _token_quantiles

REPLIES = [
    "I like toast and eggs in the morning, with a cup of tea.",
    "The sea is vast and full of life.",
    "Music helps me relax after a long day of work.",
    "A good friend listens and tells the truth.",
]


def per_direction(model, units, conversations, batch_size):
    """The former implementation: a RecordProjection per direction and layer."""
    n_layers = units.shape[1] - 1
    values = [[[] for _ in range(n_layers + 1)] for _ in range(units.shape[0])]
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(conversations), batch_size):
        part = conversations[start : start + batch_size]
        batch = collate(part, int(pad if pad is not None else 0), model.device)
        recorders = [
            [RecordProjection(units[m, layer], "all") for layer in range(n_layers + 1)] for m in range(units.shape[0])
        ]
        layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=torch.arange(len(part)))
        hooks = [(hook_name(layer, n_layers), row[layer]) for row in recorders for layer in range(n_layers + 1)]
        with install_hooks(model, hooks), token_layout(layout):
            model.run_blocks(batch.input_ids, batch.attention_mask)
        for m, row in enumerate(recorders):
            for layer, recorder in enumerate(row):
                table = recorder.projections()
                for index, conversation in enumerate(part):
                    values[m][layer].append(table[index, conversation.response_start : conversation.response_end])
    qs = torch.linspace(0, 1, 101)
    return torch.stack(
        [torch.stack([torch.quantile(torch.cat(v).float(), qs) for v in per_layer]) for per_layer in values]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--directions", type=int, default=11, help="the axis + 10 capping controls (the default)")
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = pl.load_model(args.model, device="cpu")
    shape = (model.cfg.n_layers + 1, model.cfg.d_model)
    units = unit_rows(random_like(torch.ones(shape), args.directions, seed=1))
    questions = ["What do you like?", "Tell me about the sea.", "What helps you relax?", "What is a friend?"]
    conversations = [
        encode_conversation(model.tokenizer, make_messages(questions[i % 4]), REPLIES[i % 4])
        for i in range(args.conversations)
    ]
    times = {"one hook per layer": [], "one hook per direction and layer": []}
    for _ in range(args.repeats):  # alternate, so a noisy machine slows both alike
        start = time.perf_counter()
        new = _token_quantiles(model, units, conversations, args.batch_size)
        times["one hook per layer"].append(time.perf_counter() - start)
        start = time.perf_counter()
        old = per_direction(model, units, conversations, args.batch_size)
        times["one hook per direction and layer"].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    for name, value in best.items():
        print(f"{name:34s} {value:.3f} s (best of {args.repeats})")
    print(
        f"ratio (before / now): {best['one hook per direction and layer'] / best['one hook per layer']:.2f}x; "
        f"largest difference {float((new - old).abs().max()):.2e}; {args.directions} directions x "
        f"{model.cfg.n_layers + 1} layers, {args.conversations} conversations"
    )


if __name__ == "__main__":
    main()
