"""Batched generation from chat conversations, with whatever hooks are installed on the model.

The hot path of every later step (extraction, sweeps, evaluation, screening). It runs the Hugging Face model
inside :class:`~persona_lens.core.hooked_model.HookedLM` with its own KV cache and SDPA attention, left-pads prompts,
computes logits for the last position only, and publishes a :class:`~persona_lens.core.hooks.TokenLayout` each step so
position-restricted hooks act on the same absolute positions with and without the cache.

Greedy output equals transformers' ``generate`` on the unwrapped model, and does not depend on batch size or
padding. Sampling draws each row from its own generator seeded with ``seed + row``, so sampled output does not
depend on batching either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from persona_lens.core import validate
from persona_lens.core.chat import Message, collate, encode_generated, encode_prompt
from persona_lens.core.compiled import static_decoder
from persona_lens.core.hooked_model import HookedLM, positions_from_mask
from persona_lens.core.hooks import TokenLayout, token_layout

__all__ = ["Generation", "generate", "stop_token_ids"]


@dataclass
class Generation:
    """What :func:`generate` returns, in input order."""

    texts: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    stopped: list[bool]
    """True where the row ended with a stop token (not included in ``response_ids``), False where it hit
    ``max_new_tokens``."""

    def __len__(self) -> int:
        return len(self.texts)


def stop_token_ids(model: HookedLM) -> set[int]:
    """End-of-turn tokens: the generation config's ``eos_token_id`` (one or many) and the tokenizer's EOS."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model.hf_model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, getattr(model.tokenizer, "eos_token_id", None)):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple, set)) else [value])
    return {int(i) for i in ids}


def _sample(
    logits: Float[Tensor, "batch vocab"], temperature: float, top_p: float, generators: list[torch.Generator] | None
) -> Int[Tensor, " batch"]:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_index = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, sorted_index, sorted_probs)
    assert generators is not None
    # Inverse-CDF sampling with one uniform draw per row from that row's own generator: batch-independent and
    # vectorised (a per-row multinomial over the vocabulary costs more than the forward on small models).
    uniform = torch.stack([torch.rand((), generator=gen, dtype=torch.float64) for gen in generators])
    cdf = probs.double().cumsum(-1)
    targets = uniform.to(cdf.device)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, targets, right=True).squeeze(-1)  # never a zero-probability token
    return index.clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def _generate_batch(
    model: HookedLM,
    prompts: Sequence[Sequence[int]],
    row_index: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seeds: list[int] | None,
    use_cache: bool,
    compile: bool | str | Callable[..., Any],
    stops: set[int],
    on_step: Callable[[int], None] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    device = model.device
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else min(stops, default=0)
    batch = collate([encode_generated(p, ()) for p in prompts], pad_id, device)
    layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=torch.tensor(row_index))
    generators = None
    if temperature > 0:
        generators = [torch.Generator().manual_seed(s) for s in (seeds or [0] * len(prompts))]
    stop_tensor = torch.tensor(sorted(stops), device=device, dtype=torch.long)
    n = len(prompts)
    tokens = batch.input_ids
    mask = batch.attention_mask
    new_tokens = torch.empty((n, 0), dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    cache = None
    step_input = tokens
    position_ids = positions_from_mask(mask)  # then one more per step: no cumsum over the whole mask each step
    static = static_decoder(model, tokens, mask, max_new_tokens, layout, compile) if compile else None
    with token_layout(layout):
        for step in range(max_new_tokens):
            if static is not None:
                logits = static.prefill() if step == 0 else static.step(step_input[:, 0], tokens.shape[1] - 1)
                logits = logits[:, None]
            elif use_cache:
                layout.begin_forward(past_length=tokens.shape[1] - step_input.shape[1])
                logits, cache = model(step_input, mask, position_ids, cache=cache, use_cache=True, logits_to_keep=1)
            else:
                layout.begin_forward(past_length=0)
                logits = model(tokens, mask, positions_from_mask(mask), logits_to_keep=1)
            next_token = _sample(logits[:, -1], temperature, top_p, generators)
            next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
            new_tokens = torch.cat([new_tokens, next_token[:, None]], dim=1)
            done = done | torch.isin(next_token, stop_tensor)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(next_token)[:, None]], dim=1)
            step_input = next_token[:, None]
            position_ids = position_ids[:, -1:] + 1
            if on_step is not None:
                on_step(step + 1)
            if bool(done.all()):
                break
    responses: list[list[int]] = []
    stopped: list[bool] = []
    for row in new_tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        responses.append(row if cut is None else row[:cut])
        stopped.append(cut is not None)
    return responses, stopped


def generate(
    model: HookedLM,
    conversations: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    compile: bool | str | Callable[..., Any] = False,
    stop_at_eos: bool = True,
    progress: bool = False,
    desc: str = "generate",
) -> Generation:
    """Generate a reply to each conversation (chat messages, or prompt token ids) with the installed hooks active.

    ``temperature=0`` is greedy. Rows stop at an end-of-turn token; the batch stops when every row has.
    Prompts are batched by length to limit padding; results come back in input order. Sampling uses
    ``seeds[i]`` for conversation ``i`` when given (stable keys for resumable jobs), else ``seed + i``.
    ``stop_at_eos=False`` always generates ``max_new_tokens`` (benchmarks).

    ``compile=True`` decodes on a static KV cache through a ``torch.compile``-d step (CUDA graphs on a GPU): the
    fast path for batch-1 / small-batch steered decoding (:mod:`persona_lens.core.compiled`). The first call compiles
    (tens of seconds), and so does any change of the installed hooks; a string or callable names a
    torch.compile backend (``"eager"`` and ``"aot_eager"`` check tracing without code generation).

    Args:
        model: A :class:`~persona_lens.core.hooked_model.HookedLM`.
        conversations: Chat conversations (lists of ``{"role", "content"}`` messages) or prompt token ids.
        max_new_tokens: Tokens to generate at most per reply.
        temperature: 0 is greedy.
        top_p: Nucleus sampling mass (1.0: off).
        seed: Sampling seed of the first conversation (``seed + i`` for conversation ``i``).
        seeds: One seed per conversation instead.
        batch_size: Conversations per forward batch.
        use_cache: Decode with the KV cache (``False``: recompute every step).
        compile: ``True`` or a torch.compile backend for the static-cache decoder.
        stop_at_eos: Stop a row at an end-of-turn token.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        A :class:`Generation`: ``texts``, ``prompt_ids``, ``response_ids`` and ``stopped``, in input order.

    Raises:
        TypeError: ``model`` is not a ``HookedLM``.
        ValueError: A count below 1, a negative temperature, ``top_p`` outside (0, 1], seeds of the wrong length,
            or ``compile`` without the cache.

    Example:
        >>> import persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> out = pl.generate(model, [[{"role": "user", "content": "Hi"}]], max_new_tokens=5)
        >>> len(out.texts), len(out.response_ids[0]) <= 5
        (1, True)
        >>> out.texts[0] == model.tokenizer.decode(out.response_ids[0], skip_special_tokens=True)
        True
    """
    if not isinstance(model, HookedLM):
        raise TypeError(
            "generate needs a persona_lens HookedLM (persona_lens.load_model); for a TransformerBridge "
            "use its own generate, or HookedLM(bridge.original_model, tokenizer)"
        )
    max_new_tokens = validate.positive_int(max_new_tokens, "max_new_tokens")
    batch_size = validate.positive_int(batch_size, "batch_size")
    temperature = validate.temperature(temperature, "temperature")
    top_p = validate.probability(top_p, "top_p", allow_zero=False)
    if compile and not use_cache:
        raise ValueError("compile=True decodes on a static KV cache; it cannot be combined with use_cache=False")
    prompts = [
        list(cast("Sequence[int]", c))
        if c and isinstance(c[0], int)
        else encode_prompt(model.tokenizer, cast("Sequence[Message]", c))
        for c in conversations
    ]
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} conversations")
    row_seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(prompts))]
    stops = stop_token_ids(model) if stop_at_eos else set()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses: list[list[int]] = [[] for _ in prompts]
    stopped: list[bool] = [False for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress or not prompts, unit="reply")
    batches = -(-len(prompts) // batch_size)

    def tick(step: int, batch: int) -> None:  # the bar moves per batch; its postfix shows each decoding step
        if step % 4 == 0 or step == max_new_tokens:
            bar.set_postfix_str(f"batch {batch}/{batches}, token {step}/{max_new_tokens}", refresh=True)

    for start in range(0, len(prompts), batch_size):
        index = order[start : start + batch_size]
        batch_responses, batch_stopped = _generate_batch(
            model,
            [prompts[i] for i in index],
            index,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seeds=[row_seeds[i] for i in index],
            use_cache=use_cache,
            compile=compile,
            stops=stops,
            on_step=None if bar.disable else functools.partial(tick, batch=start // batch_size + 1),
        )
        for i, response, was_stopped in zip(index, batch_responses, batch_stopped):
            responses[i], stopped[i] = response, was_stopped
        bar.update(len(index))
    bar.close()
    texts = [model.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    return Generation(texts, prompts, responses, stopped)
