"""Units per second: extraction generate calls on 2 local Ray workers vs serial in this process.

    python benchmarks/ray_units.py [--model smollm2-135m-instruct] [--units 8] [--batch 4] [--tokens 24]

Every unit is one generate call of ``--batch`` replies (sampled, seeded per job) to extraction-style prompts
(a persona system prompt and a question), as :func:`persona_lens.experiments.evaluate.generate_replies` makes
them. Serial runs them in this process with torch's default threads; Ray runs them on 2 actors with 1 CPU each
(Ray sets each worker to 1 thread), each holding its own copy of the model. The replies are checked equal.
Prints the load average before and after: these machines are shared.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from persona_lens.core.chat import make_messages
from persona_lens.core.models import load_model
from persona_lens.experiments import evaluate as E
from persona_lens.experiments.executor import RayExecutor, SerialExecutor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    model = load_model(args.model, device="cpu")
    settings = E.GenerationSettings(max_new_tokens=args.tokens, temperature=1.0, batch_size=args.batch)
    jobs = [
        E.ReplyJob(
            f"j{i}",
            make_messages(f"Question {i}: what do you think of the sea?", system="You are a cheerful pirate."),
            seed=i,
            fields={"question_text": "q"},
        )
        for i in range(args.units * args.batch)
    ]
    units = [(jobs[i : i + args.batch], settings, True) for i in range(0, len(jobs), args.batch)]
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    start = time.perf_counter()
    serial = dict(SerialExecutor().map(E._generate_call, units, model))
    t_serial = time.perf_counter() - start
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(args.model, load_kwargs={"device": "cpu"}, workers=args.workers)
    t0 = time.perf_counter()
    executor.start()
    t_start = time.perf_counter() - t0
    start = time.perf_counter()
    parallel = dict(executor.map(E._generate_call, units, model))
    t_ray = time.perf_counter() - start
    executor.shutdown()
    ray.shutdown()
    assert parallel == serial, "Ray replies differ from serial"
    n = len(units)
    print(f"model {args.model}, {n} units x {args.batch} replies x {args.tokens} new tokens (sampled)")
    print("| run | units | time | units/s | ratio |\n|---|---|---|---|---|")
    print(f"| serial (1 process) | {n} | {t_serial:.1f} s | {n / t_serial:.3f} | 1.00 |")
    print(f"| Ray, {args.workers} workers | {n} | {t_ray:.1f} s | {n / t_ray:.3f} | {t_serial / t_ray:.2f} |")
    print(f"Ray cluster + {args.workers} actors loading the model: {t_start:.1f} s (not counted above)")
    print(f"replies equal: True; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
