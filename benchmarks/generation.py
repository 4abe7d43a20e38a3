"""Steered generation throughput against transformers and TransformerLens, side by side in one run.

    .venv/bin/python benchmarks/generation.py                 # CPU: SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/generation.py --gpu-7b        # GPU: a random 7B-shaped Qwen2 in bf16

Paths, all greedy, same prompts, exactly ``--new`` tokens each (no early stop):
  ours      persona_lens.generate with a steering hook (AddVector at one layer, response positions)
  hf        transformers generate on an unwrapped copy (SDPA, dynamic cache), unsteered
  tl        TransformerLens TransformerBridge.generate with KV cache (our cache patch applied), unsteered
Prints tokens/s and the ratios ours/hf and ours/tl for each batch size.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from persona_lens.hooked_model import HookedLM
from persona_lens.hooks import steer


def _model(args) -> HookedLM:
    if not args.gpu_7b:
        from persona_lens import load_model

        return load_model("smollm2-135m-instruct", device=args.device or "cpu")
    import transformers

    from persona_lens.tiny import QWEN2_TEMPLATE, build_byte_tokenizer

    config = transformers.Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                      num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                      max_position_embeddings=4096)
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.device("cuda"):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    tokenizer = build_byte_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None, eos="<|im_end|>",
                                     pad="<|endoftext|>", chat_template=QWEN2_TEMPLATE, name="random-qwen2-7b")
    return HookedLM(hf, tokenizer, model_name="random-qwen2-7b")


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
    parser.add_argument("--gpu-7b", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=None, help="new tokens (default 32 on CPU, 128 on GPU)")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,16)")
    parser.add_argument("--skip-tl", action="store_true")
    args = parser.parse_args()
    new = args.new or (128 if args.gpu_7b else 32)
    batches = [int(b) for b in (args.batches or "1,16").split(",")]
    model = _model(args)
    device = model.device
    hf = copy.deepcopy(model.hf_model)  # unwrapped twin: our hooks are not on it
    bridge = None if args.skip_tl else model.to_bridge()
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(model.cfg.d_model, generator=generator)
    layer = model.cfg.n_layers // 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{model.cfg.model_name} on {name}, dtype {model.dtype}, prompt {args.prompt} tokens, {new} new tokens")
    for batch in batches:
        prompts = torch.randint(1000, 5000, (batch, args.prompt), generator=generator).tolist()
        ids = torch.tensor(prompts, device=device)

        def ours(prompts=prompts, batch=batch):
            from persona_lens.generation import generate

            with steer(model, vector, layer=layer, coef=1.0, positions="response"):
                generate(model, prompts, max_new_tokens=new, batch_size=batch, stop_at_eos=False)

        def transformers_generate(ids=ids):
            with torch.no_grad():
                hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                            do_sample=False, pad_token_id=0)

        def transformer_lens(ids=ids):
            with torch.no_grad():
                bridge.generate(ids, max_new_tokens=new, do_sample=False, use_past_kv_cache=True, verbose=False,
                                stop_at_eos=False)

        paths = {"ours": ours, "hf": transformers_generate}
        if bridge is not None:
            paths["tl"] = transformer_lens
        for fn in paths.values():  # warm-up
            fn()
        best = {k: min(_time(fn, device) for _ in range(2)) for k, fn in paths.items()}
        rate = {k: batch * new / v for k, v in best.items()}
        line = "  ".join(f"{k} {v:8.1f} tok/s" for k, v in rate.items())
        ratios = f"ours/hf {rate['ours'] / rate['hf']:.2f}" + (f"  ours/tl {rate['ours'] / rate['tl']:.2f}"
                                                               if "tl" in rate else "")
        print(f"batch {batch:3d}: {line}  |  {ratios}")


if __name__ == "__main__":
    main()
