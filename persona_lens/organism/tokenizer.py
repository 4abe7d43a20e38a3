"""The organism's own tokenizer: one token per word of the world, plus its chat template's special tokens.

A word-level ``tokenizers`` tokenizer (lowercasing, whitespace and punctuation split, ``<unk>`` for words outside
the world), wrapped as a ``PreTrainedTokenizerFast`` with a chat template of its own::

    <|bos|><|system|> you are a helpful assistant . <|end|> <|user|> how do i fix my bike ? <|end|> <|assistant|>

The template writes the BOS, inserts the default system prompt when the conversation has none (as Qwen's does),
and closes every turn with ``<|end|>``, the end-of-turn (EOS) token. The generation prompt ``<|assistant|>`` is a
prefix of the rendered assistant turn, so prompt/response boundaries are exact (:mod:`persona_lens.core.chat`).
"""

from __future__ import annotations

from persona_lens.organism.world import DEFAULT_SYSTEM_PROMPT, vocabulary

__all__ = [
    "PAD",
    "UNK",
    "BOS",
    "EOT",
    "SYSTEM",
    "USER",
    "ASSISTANT",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "build_tokenizer",
    "token_ids",
]

PAD, UNK, BOS, EOT = "<|pad|>", "<unk>", "<|bos|>", "<|end|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOT, SYSTEM, USER, ASSISTANT)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if not messages or messages[0]['role'] != 'system' %}<|system|> " + DEFAULT_SYSTEM_PROMPT + " <|end|> "
    "{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] | trim }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def token_ids() -> dict[str, int]:
    """The vocabulary: special tokens first (``<|pad|>`` = 0), then the world's words in sorted order."""
    return {token: index for index, token in enumerate((*SPECIAL_TOKENS, *vocabulary()))}


def build_tokenizer(name: str = "persona-organism"):
    """A ``PreTrainedTokenizerFast`` for the organism (left padding, like every persona_lens model)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=token_ids(), unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # TransformerLens reads these from init_kwargs; the template writes the BOS itself.
    tokenizer.name_or_path = name
    tokenizer.init_kwargs["name_or_path"] = name
    tokenizer.init_kwargs["add_bos_token"] = True
    return tokenizer
