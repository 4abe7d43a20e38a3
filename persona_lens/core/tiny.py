"""Tiny random chat models built in memory: Llama-, Qwen2- and Gemma-2-shaped, each with its own chat template.

They load through :func:`persona_lens.load_model` like real models (``load_model("tiny-llama")``), so every test
runs on several architectures and chat-template styles in seconds. The tokenizer is byte-level (every byte is a
token) plus the special tokens of the family's chat template, so any text round-trips exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = ["ARCHITECTURES", "build_tiny", "build_byte_tokenizer"]

# Llama-3 style: BOS in the template, role headers, <|eot_id|> closes a turn.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Qwen2 / ChatML style: no BOS, a default system prompt when none is given.
QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma style: BOS, no system role (the system prompt is folded into the first user turn), role "model".
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    config_class: str
    template: str
    special_tokens: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    extra: tuple[tuple[str, object], ...] = ()


ARCHITECTURES: dict[str, TinySpec] = {
    "tiny-llama": TinySpec(
        "LlamaConfig",
        LLAMA_TEMPLATE,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|pad|>",
    ),
    "tiny-qwen2": TinySpec(
        "Qwen2Config",
        QWEN2_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    ),
    "tiny-gemma2": TinySpec(
        "Gemma2Config",
        GEMMA2_TEMPLATE,
        ("<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<end_of_turn>",
        pad="<pad>",
        extra=(
            ("head_dim", 16),
            ("query_pre_attn_scalar", 16),
            ("sliding_window", 8),
            ("attn_logit_softcapping", 50.0),
            ("final_logit_softcapping", 30.0),
        ),
    ),
}


def build_byte_tokenizer(
    special_tokens: tuple[str, ...], *, bos: str | None, eos: str, pad: str, chat_template: str, name: str
) -> PreTrainedTokenizerFast:
    """A fast byte-level tokenizer: 256 byte tokens, then ``special_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(special_tokens))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, padding_side="left"
    )
    tokenizer.chat_template = chat_template
    # TransformerLens reads these from init_kwargs (and would reload the tokenizer from the hub by name
    # unless it already prepends BOS); our chat templates write the BOS themselves.
    tokenizer.name_or_path = name
    tokenizer.init_kwargs["name_or_path"] = name
    tokenizer.init_kwargs["add_bos_token"] = bos is not None
    return tokenizer


def build_tiny(
    name: str, *, seed: int = 0, n_layers: int = 4, d_model: int = 64
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """``(hf_model, tokenizer)`` for a tiny random model of the named family, deterministic in ``seed``."""
    import transformers

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    tokenizer = build_byte_tokenizer(
        spec.special_tokens, bos=spec.bos, eos=spec.eos, pad=spec.pad, chat_template=spec.template, name=name
    )
    config_class = getattr(transformers, spec.config_class)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **dict(spec.extra),
    )
    config.name_or_path = name
    config.architectures = [spec.config_class.replace("Config", "ForCausalLM")]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
        # Random init is tiny by default; widen it so different inputs give clearly different outputs.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, 0.2)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), tokenizer
