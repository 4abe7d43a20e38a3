"""A sweep layer's coefficients as one batch (per-conversation coefficients) vs one run per coefficient.

    .venv/bin/python benchmarks/sweep.py [--model smollm2-135m-instruct] [--coefficients 7] [--questions 20]

Same replies either way (greedy here, so the outputs are compared too); prints both times and the speed-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from persona_lens import load_model, load_trait
from persona_lens.core.chat import make_messages
from persona_lens.core.generation import generate
from persona_lens.core.hooks import steer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--coefficients", type=int, default=7)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--new", type=int, default=32)
    args = parser.parse_args()
    model = load_model(args.model)
    trait = load_trait("pirate")
    questions = [make_messages(q) for q in trait.eval_questions[: args.questions]]
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector = vector / vector.norm() * 5.0
    coefs = [0.25 * (i + 1) for i in range(args.coefficients)]
    layer = model.cfg.n_layers // 2

    start = time.perf_counter()
    separate = []
    for coef in coefs:
        with steer(model, vector, layer=layer, coef=coef, raw=True, positions="response"):
            separate += generate(model, questions, max_new_tokens=args.new, batch_size=len(questions)).texts
    t_separate = time.perf_counter() - start

    start = time.perf_counter()
    per_row = torch.tensor([c for c in coefs for _ in questions])
    with steer(model, vector, layer=layer, coef=per_row, raw=True, positions="response"):
        batched = generate(model, questions * len(coefs), max_new_tokens=args.new, batch_size=64).texts
    t_batched = time.perf_counter() - start
    same = sum(a == b for a, b in zip(separate, batched))
    print(
        f"{args.model}, layer {layer}, {len(coefs)} coefficients x {len(questions)} questions, {args.new} tokens "
        f"({torch.get_num_threads()} threads)"
    )
    print(
        f"separate runs {t_separate:7.1f} s   one batch {t_batched:7.1f} s   "
        f"speed-up {t_separate / t_batched:.2f}x   identical replies {same}/{len(batched)}"
    )


if __name__ == "__main__":
    main()
