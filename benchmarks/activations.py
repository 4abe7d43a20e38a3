"""Activation collection vs a bare forward pass, side by side on the same inputs (issue: <= 1.1x time, <= 1.2x
peak memory).

    .venv/bin/python benchmarks/activations.py [--model smollm2-135m-instruct] [--batch 16] [--tokens 256]
    .venv/bin/python benchmarks/activations.py --random qwen2-7b --device cuda     # GPU: random 7B-shaped Qwen2

The bare pass runs the same blocks with no hooks (and, like collection, computes no logits). Collection keeps
response-mean, prompt-mean and last-prompt-token activations at every layer. Time: median of interleaved repeats.
Peak memory: on CUDA, the allocator's peak; on CPU, the process's peak resident set (VmHWM, reset before each
measurement through /proc/self/clear_refs) above its resident set before the pass; medians over repeats in
alternating order (CPU peak RSS depends on the allocator's state, so single readings are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from persona_lens import load_model
from persona_lens.core.activations import reduce_batch
from persona_lens.core.chat import EncodedConversation, collate


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _peak(fn, device: torch.device) -> float:
    """Extra peak memory (MiB) of ``fn()`` over what was resident before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak RSS of this process
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--random", default=None, help="a random-weight shape from random_models.SHAPES instead")
    args = parser.parse_args()
    if args.random:
        from random_models import build_random_qwen2

        model = build_random_qwen2(args.random, args.device or "cuda", torch.bfloat16)
        args.model = model.cfg.model_name
    else:
        model = load_model(args.model, device=args.device)
    device = model.device
    generator = torch.Generator().manual_seed(0)
    prompt = args.tokens // 4
    conversations = [
        EncodedConversation(
            tuple(torch.randint(100, 1000, (args.tokens,), generator=generator).tolist()), prompt, prompt, args.tokens
        )
        for _ in range(args.batch)
    ]
    batch = collate(conversations, 0, device)

    def bare() -> None:
        with torch.no_grad():
            model.run_blocks(batch.input_ids, batch.attention_mask)

    def collect() -> None:
        reduce_batch(model, batch)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in (bare, collect):
        fn()
    times: dict[str, list[float]] = {"bare": [], "collect": []}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("collect", collect)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    peaks: dict[str, list[float]] = {"bare": [], "collect": []}
    for round_ in range(args.repeats):  # alternate the order: the allocator's state leaks from one pass to the next
        order = (("bare", bare), ("collect", collect)) if round_ % 2 == 0 else (("collect", collect), ("bare", bare))
        for name, fn in order:
            peaks[name].append(_peak(fn, device))
    memory = {name: statistics.median(values) for name, values in peaks.items()}
    t_bare, t_collect = statistics.median(times["bare"]), statistics.median(times["collect"])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"model {args.model} ({model.dtype}) on {name} ({torch.get_num_threads()} threads), "
        f"batch {args.batch} x {args.tokens} tokens, {model.cfg.n_layers + 1} layers x 3 reductions"
    )
    print(f"time   bare {t_bare * 1000:8.1f} ms   collect {t_collect * 1000:8.1f} ms   ratio {t_collect / t_bare:.3f}")
    print(
        f"memory bare {memory['bare']:8.1f} MiB  collect {memory['collect']:8.1f} MiB  ratio "
        f"{memory['collect'] / max(memory['bare'], 1e-9):.3f}"
    )


if __name__ == "__main__":
    main()
