"""Steered generation throughput against transformers and TransformerLens, side by side in one run.

    .venv/bin/python benchmarks/generation.py                 # CPU: SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/generation.py --gpu-7b        # GPU: a random 7B-shaped Qwen2 in bf16

Paths, all greedy, same prompts, exactly ``--new`` tokens each (no early stop):
  ours      persona_lens.generate with a steering hook (AddVector at one layer, response positions)
  hf        transformers generate on an unwrapped copy (SDPA, dynamic cache), unsteered
  tl        TransformerLens TransformerBridge.generate with KV cache (our cache patch applied), unsteered
  ours-c    persona_lens.generate(compile=True): static cache, torch.compile (CUDA graphs on GPU), same steering hook
  hf-c      transformers generate with cache_implementation="static" and its own compile, plus a steering
            forward hook on the same layer (the issue's reference figure)
Prints tokens/s and the ratios ours/hf, ours/tl and ours-c/hf-c for each batch size; the compiled pair runs for
``--compiled-batches`` (default 1 on GPU, none on CPU: transformers compiles only on accelerators).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import steer


def _model(args) -> HookedLM:
    if args.random:
        from random_models import build_random_qwen2

        return build_random_qwen2(
            args.random,
            args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            torch.bfloat16 if args.random == "qwen2-7b" else torch.float32,
        )
    from persona_lens import load_model

    return load_model("smollm2-135m-instruct", device=args.device or "cpu")


def _add_steering_hook(hf_model, layer: int, vector: torch.Tensor):
    """A plain PyTorch forward hook adding ``vector`` to the output of block ``layer`` (1-based, our convention)."""
    from persona_lens.core.hooked_model import find_decoder_layers

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype), *output[1:])
        return output + vector.to(output.dtype)

    return find_decoder_layers(hf_model)[layer - 1].register_forward_hook(hook)


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-7b", action="store_true", help="same as --random qwen2-7b")
    parser.add_argument("--random", default=None, help="a random-weight shape from random_models.SHAPES")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=None, help="new tokens (default 32 on CPU, 128 on GPU)")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,16)")
    parser.add_argument(
        "--compiled-batches",
        default=None,
        help="batch sizes for the compiled pair, or 'none' (default: 1 on GPU, none on CPU)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path after the warm-up (best kept)")
    parser.add_argument("--skip-tl", action="store_true")
    args = parser.parse_args()
    if args.gpu_7b:
        args.random = "qwen2-7b"
    model = _model(args)
    device = model.device
    new = args.new or (128 if device.type == "cuda" else 32)
    batches = [int(b) for b in (args.batches or "1,16").split(",")]
    default_compiled = "1" if device.type == "cuda" else "none"
    compiled_batches = {int(b) for b in (args.compiled_batches or default_compiled).split(",") if b.isdigit()}
    hf = copy.deepcopy(model.hf_model)  # unwrapped twin: our hooks are not on it
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(model.cfg.d_model, generator=generator)
    layer = model.cfg.n_layers // 2
    hf_steered = None
    if compiled_batches:
        from transformers import CompileConfig

        hf_steered = copy.deepcopy(model.hf_model)
        _add_steering_hook(hf_steered, layer, vector.to(device))
        compile_config = CompileConfig()
        compile_config._compile_all_devices = device.type != "cuda"
    bridge = None if args.skip_tl else model.to_bridge()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{model.cfg.model_name} on {name}, dtype {model.dtype}, prompt {args.prompt} tokens, {new} new tokens")
    for batch in sorted(set(batches) | compiled_batches):
        prompts = torch.randint(10, 250, (batch, args.prompt), generator=generator).tolist()
        ids = torch.tensor(prompts, device=device)
        outputs: dict[str, list] = {}

        def ours(prompts=prompts, batch=batch, compile=False, outputs=outputs):
            from persona_lens.core.generation import generate

            with steer(model, vector, layer=layer, coef=1.0, raw=True, positions="response"):
                result = generate(
                    model, prompts, max_new_tokens=new, batch_size=batch, stop_at_eos=False, compile=compile
                )
            outputs["ours-c" if compile else "ours"] = result.response_ids

        def ours_compiled(ours=ours):
            ours(compile=True)

        def transformers_compiled(ids=ids):
            with torch.no_grad():
                hf_steered.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                    cache_implementation="static",
                    compile_config=compile_config,
                )

        def transformers_generate(ids=ids):
            with torch.no_grad():
                hf.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=0,
                )

        def transformer_lens(ids=ids):
            with torch.no_grad():
                bridge.generate(
                    ids, max_new_tokens=new, do_sample=False, use_past_kv_cache=True, verbose=False, stop_at_eos=False
                )

        paths = {}
        if batch in batches:
            paths.update({"ours": ours, "hf": transformers_generate})
            if bridge is not None:
                paths["tl"] = transformer_lens
        if batch in compiled_batches:
            paths.update({"ours-c": ours_compiled, "hf-c": transformers_compiled})
        warmup = {}
        for key, fn in paths.items():  # warm-up (and compilation)
            warmup[key] = _time(fn, device)
        runs: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit every path alike
            for key, fn in paths.items():
                runs[key].append(_time(fn, device))
        best = {k: min(v) for k, v in runs.items()}
        rate = {k: batch * new / v for k, v in best.items()}
        line = "  ".join(f"{k} {v:8.1f} tok/s" for k, v in rate.items())
        ratios = [
            f"{a}/{b} {rate[a] / rate[b]:.2f}"
            for a, b in (("ours", "hf"), ("ours", "tl"), ("ours-c", "hf-c"))
            if a in rate and b in rate
        ]
        print(f"batch {batch:3d}: {line}  |  {'  '.join(ratios)}", flush=True)
        if "ours-c" in rate:
            print(f"           first call (compile) ours-c {warmup['ours-c']:.1f} s, hf-c {warmup['hf-c']:.1f} s")
        if "ours" in outputs and "ours-c" in outputs:
            same = sum(a == b for a, b in zip(outputs["ours"], outputs["ours-c"]))
            print(f"           steered greedy replies identical eager vs compiled: {same}/{batch}")


if __name__ == "__main__":
    main()
