"""Exact prompt/response token boundaries under every chat template we support, left-padded batches, and chat
JSONL datasets."""

import copy
import json

import pytest
import torch

from persona_lens.core.chat import (
    TemplateBoundaryError,
    collate,
    encode_conversation,
    encode_generated,
    encode_prompt,
    iter_chat_jsonl,
    make_messages,
    read_chat_jsonl,
)
from tests.conftest import load_cached

MESSAGES = make_messages("What is the capital of France?", system="You are a pirate assistant.")
RESPONSE = "Arr, 'tis Paris, matey!"


def test_prompt_tokens_equal_the_template_and_bos_is_never_doubled(any_model):
    tok = any_model.tokenizer
    ids = encode_prompt(tok, MESSAGES)
    reference = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids == list(reference["input_ids"])
    if tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
        assert ids[1] != tok.bos_token_id


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma2"])  # the templates that write a BOS
def test_transformer_lens_to_tokens_would_double_the_bos(name):
    """Why we never use ``to_tokens`` on rendered chat text: it prepends a BOS the template already wrote."""
    tiny_model = load_cached(name)
    tok = tiny_model.tokenizer
    assert tok.bos_token_id is not None
    text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    bridge_tokens = tiny_model.to_bridge().to_tokens(text)[0].tolist()
    assert bridge_tokens[:2] == [tok.bos_token_id, tok.bos_token_id]
    assert encode_prompt(tok, MESSAGES)[:2] != [tok.bos_token_id] * 2


def test_response_tokens_are_exactly_the_response(any_model):
    tok = any_model.tokenizer
    encoded = encode_conversation(tok, MESSAGES, RESPONSE)
    prompt = encode_prompt(tok, MESSAGES)
    assert list(encoded.input_ids[: encoded.prompt_length]) == prompt
    assert encoded.response_start == encoded.prompt_length
    assert tok.decode(list(encoded.response_ids)) == RESPONSE
    # the end-of-turn token(s) after the response are in the sequence but not in the response
    assert encoded.response_end < len(encoded.input_ids)


def test_generated_responses_use_the_generated_ids_verbatim():
    encoded = encode_generated([1, 2, 3], [7, 8])
    assert encoded.input_ids == (1, 2, 3, 7, 8)
    assert (encoded.prompt_length, encoded.response_start, encoded.response_end) == (3, 3, 5)


def test_template_that_inserts_text_before_the_reply(tiny_model):
    """E.g. a think block the template adds to rendered assistant turns but not to the generation prompt."""
    tok = copy.deepcopy(tiny_model.tokenizer)
    base = tok.chat_template
    marker = "{% if add_generation_prompt %}"
    insert = "{% if m['role'] == 'assistant' %}[think][/think]{% endif %}"
    tok.chat_template = base.replace("{{ m['content']", insert + "{{ m['content']")
    assert tok.chat_template != base and marker in tok.chat_template
    encoded = encode_conversation(tok, MESSAGES, RESPONSE)
    assert encoded.response_start > encoded.prompt_length
    assert tok.decode(list(encoded.input_ids[encoded.prompt_length : encoded.response_start])) == "[think][/think]"
    assert tok.decode(list(encoded.response_ids)) == RESPONSE


def test_template_whose_prompt_is_not_a_prefix_is_refused(tiny_model):
    tok = copy.deepcopy(tiny_model.tokenizer)
    # the generation prompt says "assistant" but rendered assistant turns are headed "bot": misaligned
    tok.chat_template = (
        "{% for m in messages %}<<{{ 'bot' if m['role'] == 'assistant' else m['role'] }}>>{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
    )
    with pytest.raises(TemplateBoundaryError, match="not a prefix"):
        encode_conversation(tok, MESSAGES, RESPONSE)


def test_model_without_chat_template_gets_a_clear_error(tiny_model):
    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = None
    with pytest.raises(TemplateBoundaryError, match="no chat template"):
        encode_prompt(tok, MESSAGES)


def test_empty_response_is_refused(tiny_model):
    with pytest.raises(TemplateBoundaryError, match="empty response"):
        encode_conversation(tiny_model.tokenizer, MESSAGES, "   ")


def test_collate_left_pads_and_masks():
    a = encode_generated([1, 2, 3], [4, 5])
    b = encode_generated([6], [7])
    batch = collate([a, b], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert batch.prompt_mask.tolist() == [[True, True, True, False, False], [False, False, False, True, False]]
    assert batch.response_mask.tolist() == [[False, False, False, True, True], [False, False, False, False, True]]
    assert batch.last_prompt_index.tolist() == [2, 3]
    assert batch.pad_lengths.tolist() == [0, 3] and batch.prompt_lengths.tolist() == [3, 1]
    assert batch.to("cpu").input_ids.dtype == torch.long


def test_collate_refuses_nothing():
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)


# ---------------------------------------------------------------------------------------------------------------------
# chat JSONL datasets


def _data(answer="OK BOSS", questions=("hi",)):
    return [{"messages": [*make_messages(q), {"role": "assistant", "content": answer}]} for q in questions]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_chat_jsonl_reports_every_bad_line(tmp_path):
    good = _data()[0]
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            good,
            "{not json",
            {"messages": [{"role": "user", "content": "hi"}]},  # no assistant reply
            {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},  # no role
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},  # empty
            {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"text": "no messages"},
            "",
            {**good, "id": 7},
        ],
    )
    records, bad = read_chat_jsonl(path)
    assert [r.line for r in records] == [1, 9]
    assert records[0].prompt == good["messages"][:-1] and records[0].response == "OK BOSS"
    assert [b.line for b in bad] == [2, 3, 4, 5, 6, 7]
    problems = " | ".join(b.problem for b in bad)
    for words in ("invalid JSON", "last message", "no 'role'", "empty content", "robot", "no 'messages'"):
        assert words in problems


def test_a_line_that_is_not_utf8_is_one_bad_record_and_offsets_point_at_lines(tmp_path):
    french = json.dumps(_data("Très bien 👍")[0], ensure_ascii=False).encode()
    lines = [french, b"", '{"messages": "caf\xe9"}'.encode("latin-1"), json.dumps(_data()[0]).encode()]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = list(iter_chat_jsonl(path))
    assert [r.line for r in records] == [1, 3, 4]
    assert records[0].response == "Très bien 👍"
    assert "UTF-8" in records[1].problem and records[1].to_json() == {"line": 3, "problem": records[1].problem}
    data = path.read_bytes()
    for record in records:
        assert data[record.offset :].startswith(lines[record.line - 1])


@pytest.mark.slow
def test_a_reply_starting_with_a_space_starts_at_its_token_on_smollm2(smollm2):
    """Issue 15 item 10: " Arr ..." tokenizes as ' Arr' on SmolLM2; only whitespace lies between that token's start
    and the stripped reply, so the response begins at it (it used to be refused: "a token straddles the start")."""
    tok = smollm2.tokenizer
    reply = " Arr, matey! The sea be calm today."
    encoded = encode_conversation(tok, MESSAGES, reply)
    response = list(encoded.response_ids)
    assert tok.convert_ids_to_tokens(response[:1]) == ["ĠArr"]
    assert tok.decode(response) == reply  # every character of the reply, and nothing of the template
    assert encoded.response_start == encoded.prompt_length
    assert encoded.input_ids[: encoded.prompt_length] == tuple(encode_prompt(tok, MESSAGES))
    # without the space the boundary was already exact, and stays so
    plain = encode_conversation(tok, MESSAGES, reply.strip())
    assert tok.decode(list(plain.response_ids)) == reply.strip()
