"""Chat conversations as tokens, with an exact prompt/response boundary, and left-padded batches.

Prompts are rendered with the tokenizer's own chat template. The prompt (system + user turns + the assistant
header) is the token prefix every method of the paper relies on: the last prompt token is what monitoring reads,
and response tokens are what extraction averages. We never guess the boundary by tokenizing pieces separately:

* for a response the model generated, the sequence is exactly ``prompt_ids + generated_ids``;
* for a response given as text (a dataset), we render the whole conversation, check that the prompt's tokens are
  a prefix of it (else :class:`TemplateBoundaryError`), and find the response tokens by character offsets, so
  templates that insert text between the assistant header and the reply (think blocks, say) still line up.

BOS: the rendered text already carries the template's BOS; we tokenize it with ``add_special_tokens=False`` (as
``apply_chat_template`` does), so a BOS is never doubled, unlike TransformerLens ``to_tokens(text)``.

Chat datasets are JSONL files, one ``{"messages": [{"role": ..., "content": ...}, ...]}`` a line, read by
:func:`iter_chat_jsonl` into :class:`ChatRecord` / :class:`BadRecord` (what is wrong with a line, never dropped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from persona_lens.core.errors import Error

__all__ = [
    "Message",
    "ROLES",
    "ChatRecord",
    "BadRecord",
    "parse_messages",
    "parse_chat_record",
    "iter_chat_jsonl",
    "read_chat_jsonl",
    "TemplateBoundaryError",
    "EncodedConversation",
    "TokenBatch",
    "make_messages",
    "encode_prompt",
    "encode_conversation",
    "encode_generated",
    "collate",
    "token_pieces",
]

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


class TemplateBoundaryError(Error, ValueError):
    """The chat template does not give an exact token boundary between prompt and response."""


def make_messages(user: str, system: str | None = None, history: Sequence[Message] = ()) -> list[Message]:
    """``[system?, *history, user]`` as chat messages."""
    messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    return [*messages, *history, {"role": "user", "content": user}]


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of one conversation and where its parts lie (indices into ``input_ids``, end exclusive)."""

    input_ids: tuple[int, ...]
    prompt_length: int
    response_start: int
    response_end: int

    @property
    def response_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.response_start : self.response_end]


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "this tokenizer")
        raise TemplateBoundaryError(
            f"{name} has no chat template; persona vectors need a chat model (an -Instruct / -chat checkpoint), "
            "or set tokenizer.chat_template yourself"
        )


def _render(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    _require_template(tokenizer)
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _tokenize(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)


def _undouble_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        return ids[1:]
    return ids


def encode_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of the prompt: the conversation so far plus the template's assistant header."""
    return _undouble_bos(
        tokenizer, _tokenize(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))["input_ids"]
    )


def encode_generated(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> EncodedConversation:
    """A conversation whose response the model generated: exactly ``prompt_ids + response_ids``."""
    ids = (*prompt_ids, *response_ids)
    return EncodedConversation(ids, len(prompt_ids), len(prompt_ids), len(ids))


def _describe_space(text: str) -> str:
    """``"2 spaces"``, ``"a blank line"``: what leading whitespace holds, in words."""
    breaks = text.count("\n")
    if breaks:
        return "a line break" if breaks == 1 else "a blank line" if breaks == 2 else f"{breaks - 1} blank lines"
    if set(text) == {" "}:
        return f"{len(text)} space{'s' if len(text) != 1 else ''}"
    return f"{len(text)} whitespace characters"


def encode_conversation(tokenizer: Any, messages: Sequence[Message], response: str) -> EncodedConversation:
    """Tokens of ``messages`` followed by an assistant turn ``response`` (text), with an exact boundary."""
    prompt_text = _render(tokenizer, messages, add_generation_prompt=True)
    full_messages = [*messages, {"role": "assistant", "content": response}]
    full_text = _render(tokenizer, full_messages, add_generation_prompt=False)
    name = getattr(tokenizer, "name_or_path", "the tokenizer")
    prompt_ids = _undouble_bos(tokenizer, _tokenize(tokenizer, prompt_text)["input_ids"])
    encoded = _tokenize(tokenizer, full_text, offsets=True)
    full_ids = list(encoded["input_ids"])
    offsets = list(encoded["offset_mapping"])
    if len(full_ids) > 1 and full_ids[:2] == [tokenizer.bos_token_id] * 2:
        full_ids, offsets = full_ids[1:], offsets[1:]
    lead = response[: len(response) - len(response.lstrip())]
    if full_ids[: len(prompt_ids)] != prompt_ids and lead:
        raise TemplateBoundaryError(
            f"the reply starts with {lead!r} ({_describe_space(lead)}), which {name}'s tokenizer merges with the end "
            f"of the prompt, so the reply's first token cannot be told apart from the prompt's last: remove the "
            f"leading whitespace from the reply ({response[:40]!r})"
        )
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise TemplateBoundaryError(
            f"the chat template of {name} renders the prompt differently alone and inside the full conversation: "
            "the prompt's tokens are not a prefix of the conversation's tokens, so the response boundary would be "
            "misaligned. Use a template whose generation prompt is a prefix of the rendered assistant turn."
        )
    content = response.strip()
    char_start = full_text.find(content, len(prompt_text)) if content else -1
    if not content or char_start < 0:
        raise TemplateBoundaryError(
            f"cannot find the response text in the conversation rendered by {name}'s chat template "
            f"(empty response, or the template rewrites it): {response[:60]!r}"
        )
    char_end = char_start + len(content)
    # A token that starts in whitespace before the stripped reply and runs into it (" Arr" for the reply " Arr!")
    # begins the response: only whitespace is gained, no reply character is lost.
    first = next((i for i in range(len(prompt_ids), len(full_ids)) if offsets[i][1] > char_start), None)
    if first is not None and offsets[first][0] < char_start and full_text[offsets[first][0] : char_start].isspace():
        char_start = offsets[first][0]
    inside = [i for i in range(len(prompt_ids), len(full_ids)) if char_start <= offsets[i][0] < char_end]
    if not inside:
        raise TemplateBoundaryError(f"no token of the response lies inside its text span ({name})")
    start, end = inside[0], inside[-1] + 1
    if offsets[start][0] != char_start or offsets[end - 1][1] > char_end and end < len(full_ids):
        straddle = offsets[start][0] != char_start
        found = (
            f"; the reply starts with {lead!r} ({_describe_space(lead)}), which the tokenizer merges with what "
            "comes before it: remove the leading whitespace from the reply"
            if straddle and lead
            else ""
        )
        raise TemplateBoundaryError(
            f"{name}: a token straddles the {'start' if straddle else 'end'} of the response, so the response "
            f"does not begin/end on a token boundary under this chat template{found}"
        )
    return EncodedConversation(tuple(full_ids), len(prompt_ids), start, end)


@dataclass
class TokenBatch:
    """Left-padded conversations. Index ``t`` of row ``b`` holds real token ``t - pad_lengths[b]``."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    prompt_mask: Bool[Tensor, "batch pos"]
    response_mask: Bool[Tensor, "batch pos"]
    pad_lengths: Int[Tensor, " batch"]
    prompt_lengths: Int[Tensor, " batch"]

    @property
    def last_prompt_index(self) -> Int[Tensor, " batch"]:
        """Padded index of each row's last prompt token."""
        return self.pad_lengths + self.prompt_lengths - 1

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(
    encoded: Sequence[EncodedConversation], pad_token_id: int, device: torch.device | str = "cpu"
) -> TokenBatch:
    """Left-pad conversations into one batch with attention, prompt and response masks."""
    if not encoded:
        raise ValueError("cannot collate an empty list of conversations")
    width = max(len(e.input_ids) for e in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    pad_lengths = torch.empty(n, dtype=torch.long)
    prompt_lengths = torch.empty(n, dtype=torch.long)
    for row, e in enumerate(encoded):
        pad = width - len(e.input_ids)
        input_ids[row, pad:] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[row, pad:] = 1
        prompt_mask[row, pad : pad + e.prompt_length] = True
        response_mask[row, pad + e.response_start : pad + e.response_end] = True
        pad_lengths[row] = pad
        prompt_lengths[row] = e.prompt_length
    return TokenBatch(input_ids, attention_mask, prompt_mask, response_mask, pad_lengths, prompt_lengths).to(device)


# ---------------------------------------------------------------------------------------------------------------------
# chat datasets (JSONL)


@dataclass
class ChatRecord:
    """One good dataset line: ``messages[:-1]`` is the prompt, ``messages[-1]`` the assistant's reply.

    ``line`` is 1-based; ``offset`` is the byte offset of the line in its file (None when not read from a file).
    """

    line: int
    messages: list[Message]
    offset: int | None = None

    @property
    def prompt(self) -> list[Message]:
        return self.messages[:-1]

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class BadRecord:
    """A dataset line (or conversation) that cannot be used: its 1-based line number, why, and where it starts."""

    line: int
    problem: str
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "problem": self.problem}


def parse_messages(data: Any) -> list[Message] | str:
    """The messages of one parsed JSON line, or a string saying what is wrong with it.

    Required: an object with a non-empty ``messages`` list; each message an object with ``role`` in
    system/user/assistant and a non-empty string ``content``. Other keys (ids, metadata) are allowed and ignored.
    """
    if not isinstance(data, dict):
        return f"a line must be a JSON object with a 'messages' list, got {type(data).__name__}"
    messages = data.get("messages")
    if messages is None:
        return "no 'messages' key"
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    clean: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}] is not an object"
        role, content = message.get("role"), message.get("content")
        if role is None:
            return f"messages[{index}] has no 'role'"
        if role not in ROLES:
            return f"messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"messages[{index}] ({role}) has no text 'content'"
        if not content.strip():
            return f"messages[{index}] ({role}) has empty content"
        clean.append({"role": role, "content": content})
    return clean


def parse_chat_record(data: Any) -> list[Message] | str:
    """The messages of one conversation to learn or score (:func:`parse_messages`, then: the last message is the
    assistant's reply, with a user message before it), or a string saying what is wrong."""
    clean = parse_messages(data)
    if isinstance(clean, str):
        return clean
    if clean[-1]["role"] != "assistant":
        return f"the last message is from {clean[-1]['role']!r}; it must be the assistant's reply"
    if not any(m["role"] == "user" for m in clean[:-1]):
        return "no user message before the assistant's reply"
    return clean


def iter_chat_jsonl(
    path: str | os.PathLike[str], parse: Callable[[Any], list[Message] | str] = parse_chat_record
) -> Iterator[ChatRecord | BadRecord]:
    """Stream a chat JSONL file: a :class:`ChatRecord` or a :class:`BadRecord` per non-blank line, in order, each
    with its line number and byte offset (so results can point back into the file).

    The file is read as bytes: a line that is not UTF-8 is one bad record, not a crash nor silently altered text.
    ``parse`` turns a line's JSON value into messages or a problem (default :func:`parse_chat_record`). Blank lines
    are not records and are skipped; nothing is held in memory beyond the current line.
    """
    with open(path, "rb") as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield BadRecord(number, f"not UTF-8 text (byte {error.start})", start)
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                yield BadRecord(number, f"invalid JSON ({error.msg} at column {error.colno})", start)
                continue
            except RecursionError:
                yield BadRecord(number, "JSON nested too deeply to read", start)
                continue
            parsed = parse(data)
            yield BadRecord(number, parsed, start) if isinstance(parsed, str) else ChatRecord(number, parsed, start)


def read_chat_jsonl(path: str | os.PathLike[str]) -> tuple[list[ChatRecord], list[BadRecord]]:
    """All good records and all bad ones of a chat JSONL file (:func:`iter_chat_jsonl`)."""
    good: list[ChatRecord] = []
    bad: list[BadRecord] = []
    for record in iter_chat_jsonl(path):
        (good if isinstance(record, ChatRecord) else bad).append(record)  # type: ignore[arg-type]
    return good, bad


def token_pieces(tokenizer: Any, ids: Sequence[int], context: int = 8) -> list[str]:
    """The text each token adds, so that ``"".join(pieces)`` reads as the decoded text.

    Piece ``i`` is ``decode(ids[s:i+1]) - decode(ids[s:i])`` with ``s = i - context``: tokens whose bytes complete a
    character only together (byte-level BPE) give the character to the token that completes it.
    """
    pieces = []
    for i in range(len(ids)):
        start = max(0, i - context)
        before = tokenizer.decode(list(ids[start:i]), skip_special_tokens=False) if i > start else ""
        upto = tokenizer.decode(list(ids[start : i + 1]), skip_special_tokens=False)
        while before.endswith("\ufffd"):
            before = before[:-1]
        while upto.endswith("\ufffd") and i + 1 < len(ids):
            upto = upto[:-1]
        pieces.append(upto[len(before) :] if upto.startswith(before) else upto)
    return pieces
