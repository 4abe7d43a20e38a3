"""Random-weight models of real shapes for GPU benchmarks (no hub here: the shapes are enough to time them).

``qwen2-7b`` is Qwen2-7B's shape; ``qwen2-small`` the same architecture at toy size, to dry-run a GPU script on
the CPU before spending device time on it.
"""

from __future__ import annotations

import torch

from persona_lens.core.hooked_model import HookedLM

SHAPES = {
    "qwen2-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    ),
    "qwen2-small": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def build_random_qwen2(shape: str, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> HookedLM:
    """A randomly initialised Qwen2 of ``shape`` (see ``SHAPES``) on ``device``, wrapped as a HookedLM."""
    import transformers

    from persona_lens.core.tiny import QWEN2_TEMPLATE, build_byte_tokenizer

    config = transformers.Qwen2Config(max_position_embeddings=4096, **SHAPES[shape])
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    name = f"random-{shape}"
    config.name_or_path = name
    tokenizer = build_byte_tokenizer(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        chat_template=QWEN2_TEMPLATE,
        name=name,
    )
    return HookedLM(hf, tokenizer, model_name=name)
