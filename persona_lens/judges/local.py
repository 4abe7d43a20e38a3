"""`LocalJudge`: any local chat model as judge, scoring from the exact probability of each answer 0..100.

The paper's judge took one output token's top-20 logprobs and averaged the integers among them, weighted by
probability (None when under 0.25 of the mass was numeric). A local model gives us every probability, so we compute
``P(n)`` exactly for each integer ``n`` in 0..100: the probability that the reply starts with the decimal digits of
``n`` (no leading zeros) followed by something that is not a digit (any other character, or end of turn). It sums
every tokenization of those digits: for a digit-by-digit tokenizer such as SmolLM2's,
``P("42") = P("4") * P("2" | "4") * P(non-digit next | "4", "2")``; with whole-number tokens the single-token
reading ``P("42") * P(non-digit next | "42")`` is added, as are tokens that carry the end of the number and more
(``"2."``). A first token may carry leading spaces (``" 42"``). A token's text is what ``tokenizer.decode`` gives
for it alone.

Then ``score = sum_n n P(n) / sum_n P(n)``, or None when ``sum_n P(n) < min_numeric_mass``.

The prompt is the rubric (slots filled) as the user turn of the model's chat template, with the generation prompt.
Each batch of prompts runs once with a KV cache; the digit continuations run on copies of that cache, one token
each, depth first, in chunks that bound memory. Whatever hooks are active on the model (steering) apply here too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from persona_lens.core.chat import collate, encode_generated, encode_prompt, make_messages
from persona_lens.core.hooked_model import HookedLM
from persona_lens.judges.base import Score, Verdict, check_rubric, fill_rubric

__all__ = ["LocalJudge", "NumberVocab", "build_number_vocab", "score_from_probs", "MAX_NUMBER"]

MAX_NUMBER = 100
_DIGITS = frozenset("0123456789")
_CANONICAL = {str(n): n for n in range(MAX_NUMBER + 1)}
_PREFIXES = {text[:k] for text in _CANONICAL for k in range(1, len(text) + 1)}


def _leading_digits(text: str) -> int:
    count = 0
    while count < len(text) and text[count] in _DIGITS:
        count += 1
    return count


@dataclass(frozen=True)
class NumberVocab:
    """How a tokenizer's tokens continue the digits read so far.

    For a state (the digits read so far, ``""`` at the start of the reply): ``children[state]`` lists the tokens
    that add digits and keep a possible number going, as ``(token, new state)``; ``finals[state]`` the tokens that
    end a number inside themselves (``"2."``), as ``(token, number)``. ``digit_start[token]`` is True when the
    token's text starts with an ASCII digit; any other token ends the number read so far.
    """

    children: dict[str, list[tuple[int, str]]]
    finals: dict[str, list[tuple[int, int]]]
    digit_start: Tensor
    token_ids: Tensor  # every token that appears in children or finals
    column: dict[int, int]  # token id -> its index in token_ids


def _token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    known = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode(
        [[i] for i in range(known)], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return list(texts) + [""] * (vocab_size - known)  # ids past the tokenizer (padded vocabularies): not digits


def build_number_vocab(tokenizer: Any, vocab_size: int) -> NumberVocab:
    """Classify every token of ``tokenizer`` (``vocab_size`` = the model's logit width) for reading numbers 0..100."""
    texts = _token_texts(tokenizer, vocab_size)
    starts = [text[:1] in _DIGITS for text in texts]  # "" is not in _DIGITS
    candidates = [i for i, text in enumerate(texts) if text.lstrip(" ")[:1] in _DIGITS]
    children: dict[str, list[tuple[int, str]]] = {}
    finals: dict[str, list[tuple[int, int]]] = {}
    for state in ["", *sorted(_PREFIXES)]:
        children[state], finals[state] = [], []
        for token in candidates:
            text = texts[token]
            if state == "":
                text = text.lstrip(" ")  # only the reply's first token may carry leading spaces
            elif not starts[token]:
                continue
            extended = state + text
            digits = _leading_digits(extended)
            if digits == len(extended):
                if extended in _PREFIXES:
                    children[state].append((token, extended))
            elif extended[:digits] in _CANONICAL:
                finals[state].append((token, _CANONICAL[extended[:digits]]))
    used = sorted({t for lst in children.values() for t, _ in lst} | {t for lst in finals.values() for t, _ in lst})
    return NumberVocab(
        children,
        finals,
        torch.tensor(starts, dtype=torch.bool),
        torch.tensor(used, dtype=torch.long),
        {token: col for col, token in enumerate(used)},
    )


def score_from_probs(probs: Tensor, min_numeric_mass: float) -> tuple[Score, float]:
    """(score, numeric mass) from the 101 probabilities ``P(0..100)``; the score is None below the mass."""
    mass = float(probs.sum())
    if mass <= 0.0 or mass < min_numeric_mass:
        return None, mass
    numbers = torch.arange(probs.shape[-1], dtype=probs.dtype)
    return float((probs * numbers).sum() / mass), mass


def _select_rows(cache: Any, rows: Tensor) -> Any:
    """A cache holding only ``rows`` of ``cache`` (new tensors; ``cache`` itself is left as it was)."""
    if hasattr(cache, "layers"):
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in cache.layers]
    else:  # an older cache class: copy it whole
        selected = copy.deepcopy(cache)
    selected.reorder_cache(rows)
    return selected


@dataclass
class _Node:
    item: int  # row of the prompt batch this path belongs to
    state: str  # digits read so far
    logp: float  # log probability of the tokens so far


class LocalJudge:
    """A local causal LM as judge (see the module docstring).

    ``batch_size`` prompts share one forward; ``token_budget`` bounds ``rows * cached tokens`` of each continuation
    forward (memory). ``system_prompt``: None keeps the template's default.
    """

    def __init__(
        self,
        model: HookedLM,
        *,
        batch_size: int = 8,
        min_numeric_mass: float = 0.25,
        system_prompt: str | None = None,
        token_budget: int = 32768,
    ) -> None:
        if batch_size < 1 or token_budget < 1:
            raise ValueError("batch_size and token_budget must be >= 1")
        if not 0.0 <= min_numeric_mass <= 1.0:
            raise ValueError(f"min_numeric_mass must lie in [0, 1], not {min_numeric_mass}")
        self.model = model
        self.batch_size = batch_size
        self.min_numeric_mass = min_numeric_mass
        self.system_prompt = system_prompt
        self.token_budget = token_budget
        self._vocab: NumberVocab | None = None

    @property
    def judge_id(self) -> str:
        base = f"local:{self.model.cfg.model_name}"
        extras = []
        if self.min_numeric_mass != 0.25:
            extras.append(f"min_mass={self.min_numeric_mass:g}")
        if self.system_prompt is not None:
            extras.append(f"system={self.system_prompt!r}")
        return base + (f"?{'&'.join(extras)}" if extras else "")

    def __repr__(self) -> str:
        return f"LocalJudge({self.model.cfg.model_name!r})"

    @property
    def vocab(self) -> NumberVocab:
        if self._vocab is None:
            vocab_size = self.model.hf_model.get_output_embeddings().weight.shape[0]
            self._vocab = build_number_vocab(self.model.tokenizer, vocab_size)
        return self._vocab

    # ------------------------------------------------------------------------------------------------ scoring
    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        return [v.score for v in self.score_detailed(rubric, items)]

    def score_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Scores with a reason for each None (too little numeric mass); every verdict is final."""
        verdicts = []
        for row in self.number_probs(rubric, items):
            score, mass = score_from_probs(row, self.min_numeric_mass)
            reason = "" if score is not None else (f"numeric probability mass {mass:.3g} < {self.min_numeric_mass:g}")
            verdicts.append(Verdict(score, reason, True))
        return verdicts

    def prompt_ids(self, rubric: str, question: str, answer: str) -> list[int]:
        """Token ids of the judge prompt for one item (chat template, generation prompt on)."""
        messages = make_messages(fill_rubric(rubric, question, answer), system=self.system_prompt)
        return encode_prompt(self.model.tokenizer, messages)

    def number_probs(self, rubric: str, items: Sequence[tuple[str, str]]) -> Tensor:
        """``[len(items), 101]`` float64: the exact probability that each reply is the number 0..100."""
        check_rubric(rubric)
        prompts = [self.prompt_ids(rubric, q, a) for q, a in items]
        out = torch.zeros(len(prompts), MAX_NUMBER + 1, dtype=torch.float64)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._probs_for_prompts([prompts[i] for i in chunk])
        return out

    @torch.no_grad()
    def _probs_for_prompts(self, prompts: list[list[int]]) -> Tensor:
        pad_id = self.model.tokenizer.pad_token_id
        batch = collate(
            [encode_generated(p, ()) for p in prompts], pad_id if pad_id is not None else 0, device=self.model.device
        )
        logits, cache = self.model(batch.input_ids, batch.attention_mask, use_cache=True, logits_to_keep=1)
        probs = torch.zeros(len(prompts), MAX_NUMBER + 1, dtype=torch.float64)
        nodes = [_Node(item, "", 0.0) for item in range(len(prompts))]
        self._expand(cache, batch.attention_mask, logits[:, -1], nodes, probs)
        return probs

    def _expand(self, cache: Any, mask: Tensor, logits: Tensor, nodes: list[_Node], probs: Tensor) -> None:
        """Add to ``probs`` what each node's next token decides, then run the nodes' digit continuations."""
        vocab = self.vocab
        logp = logits.double().log_softmax(-1)
        ends = logp.masked_fill(vocab.digit_start.to(logp.device), -math.inf).logsumexp(-1).cpu().tolist()
        picked = logp[:, vocab.token_ids.to(logp.device)].cpu().tolist() if len(vocab.token_ids) else [[]] * len(nodes)
        children: list[tuple[int, int, _Node]] = []  # (row in cache, token to feed, the new node)
        for row, node in enumerate(nodes):
            if node.state:  # the digits read so far are a number; a non-digit token ends it here
                probs[node.item, _CANONICAL[node.state]] += math.exp(node.logp + ends[row])
            for token, number in vocab.finals[node.state]:
                probs[node.item, number] += math.exp(node.logp + picked[row][vocab.column[token]])
            for token, state in vocab.children[node.state]:
                children.append((row, token, _Node(node.item, state, node.logp + picked[row][vocab.column[token]])))
        if not children:
            return
        rows_per_forward = max(1, self.token_budget // (mask.shape[1] + 1))
        device = mask.device
        for start in range(0, len(children), rows_per_forward):
            chunk = children[start : start + rows_per_forward]
            rows = torch.tensor([row for row, _, _ in chunk], dtype=torch.long, device=device)
            sub_cache = _select_rows(cache, rows)
            sub_mask = torch.cat([mask[rows], torch.ones(len(chunk), 1, dtype=mask.dtype, device=device)], dim=1)
            tokens = torch.tensor([[token] for _, token, _ in chunk], dtype=torch.long, device=device)
            sub_logits, sub_cache = self.model(tokens, sub_mask, cache=sub_cache, use_cache=True, logits_to_keep=1)
            self._expand(sub_cache, sub_mask, sub_logits[:, -1], [node for _, _, node in chunk], probs)
