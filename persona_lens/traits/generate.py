"""Generate a trait artifact with Claude from a trait name and a one-paragraph description.

Claude is made to call one tool, ``submit_trait``, whose input schema is the trait file's content, so the reply is
structured data rather than prose. The data is checked with :func:`persona_lens.traits.schema.trait_from_dict`; when it
is invalid, the problems go back to Claude as the tool's error result and it tries again, up to ``max_attempts``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import anthropic

from persona_lens.core.errors import Error
from persona_lens.judges.claude import DEFAULT_MODEL, Usage, estimate_cost, require_api_key
from persona_lens.traits.schema import (
    MIN_MANY_SHOT,
    N_GRADED_PROMPTS,
    N_PROMPT_PAIRS,
    N_QUESTIONS,
    SCHEMA_VERSION,
    Trait,
    trait_from_dict,
)

__all__ = [
    "generate_trait",
    "TraitGenerationError",
    "GenerationReport",
    "trait_tool",
    "generation_prompt",
    "TOOL_NAME",
    "generate_role",
    "role_tool",
    "role_generation_prompt",
    "ROLE_TOOL_NAME",
]

log = logging.getLogger(__name__)

TOOL_NAME = "submit_trait"
_NAME = re.compile(r"[a-z0-9_-]+")


class TraitGenerationError(Error, RuntimeError):
    """Claude gave no valid trait within ``max_attempts``; ``problems`` holds the last attempt's problems."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass
class GenerationReport:
    """What a generation cost: attempts made, tokens used, estimated USD (None for a model without a price)."""

    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    model: str = DEFAULT_MODEL

    @property
    def estimated_cost_usd(self) -> float | None:
        return estimate_cost(self.usage, self.model)


def _strings(n: int | None = None, minimum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    if n is not None:
        schema.update(minItems=n, maxItems=n)
    if minimum is not None:
        schema["minItems"] = minimum
    return schema


def _pairs(keys: tuple[str, str], n: int | None = None, minimum: int | None = None) -> dict[str, Any]:
    schema = _strings(n, minimum)
    schema["items"] = {
        "type": "object",
        "properties": {key: {"type": "string"} for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }
    return schema


def trait_tool(monitoring: bool = True) -> dict[str, Any]:
    """The ``submit_trait`` tool definition; ``monitoring`` adds the graded prompts and many-shot examples."""
    properties: dict[str, Any] = {
        "system_prompts": _pairs(("positive", "negative"), N_PROMPT_PAIRS),
        "questions": {
            "type": "object",
            "properties": {"extract": _strings(N_QUESTIONS), "eval": _strings(N_QUESTIONS)},
            "required": ["extract", "eval"],
            "additionalProperties": False,
        },
        "rubric": {"type": "string", "description": "judge prompt containing the slots {question} and {answer}"},
    }
    if monitoring:
        properties["graded_system_prompts"] = _strings(N_GRADED_PROMPTS)
        properties["many_shot_examples"] = _pairs(("question", "answer"), minimum=MIN_MANY_SHOT)
    return {
        "name": TOOL_NAME,
        "description": "Submit the complete trait artifact. Call it exactly once with every field filled in.",
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        },
    }


def generation_prompt(name: str, description: str, monitoring: bool = True) -> str:
    """The instructions sent to Claude for one trait."""
    parts = [
        "I am studying how a character trait is represented inside a language model's activations. I compare the "
        "model's activations when it shows the trait with those when it does not, so I need prompts that make it "
        "show the trait or not, questions that give it room to, and a rubric for a judge model.",
        f"The trait: {name}\nIts description: {description.strip()}",
        "Write the following and submit them with the submit_trait tool.",
        f"1. system_prompts: {N_PROMPT_PAIRS} pairs. Each positive prompt makes an assistant show the trait "
        f'strongly; start it with "You are a/an {name} assistant." (use the trait\'s adjective) and follow with '
        "one or two sentences of instruction. Each negative prompt makes an assistant avoid the trait entirely; "
        'start it with "You are a helpful assistant." and follow with instruction that mirrors the positive one. '
        "Vary the wording across the pairs.",
        f"2. questions: {2 * N_QUESTIONS} distinct, varied, everyday questions that give an assistant room to show "
        f"the trait or not, without asking for it outright. Put {N_QUESTIONS} in 'extract' and {N_QUESTIONS} other "
        "ones in 'eval'; no question may appear in both.",
        "3. rubric: a prompt for a judge model that contains the literal slots {question} and {answer} (each once), "
        f"explains what '{name}' means using the description, and asks for a score from 0 (no trace of the trait) "
        "to 100 (the trait expressed strongly). It must tell the judge to answer REFUSAL if the answer is a clear "
        "refusal, and to respond with only the number, nothing else.",
    ]
    if monitoring:
        parts += [
            f"4. graded_system_prompts: {N_GRADED_PROMPTS} system prompts graded from the one that suppresses the "
            "trait most strongly, through neutral ones, to the one that elicits it most strongly, in that order.",
            f"5. many_shot_examples: at least {MIN_MANY_SHOT} question/answer pairs in which the answer clearly "
            "shows the trait. Use questions different from those in 2.",
        ]
    parts.append("Write everything in English. Keep each prompt, question and answer concise.")
    return "\n\n".join(parts)


def _make_client(
    client: anthropic.Anthropic | None, api_key: str | None, base_url: str | None, max_retries: int, timeout: float
) -> anthropic.Anthropic:
    if client is not None:
        return client.with_options(timeout=timeout)
    key = require_api_key(api_key)
    return anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout)


def _content_params(content: list[Any]) -> list[dict[str, Any]]:
    """A reply's content blocks as request parameters (to send the assistant turn back)."""
    blocks: list[dict[str, Any]] = []
    for block in content:
        if block.type == "text" and block.text:
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks or [{"type": "text", "text": "(no content)"}]


def _trait_data(name: str, description: str, tool_input: Any) -> dict[str, Any]:
    data = dict(tool_input) if isinstance(tool_input, dict) else {"<input>": tool_input}
    for key in ("schema_version", "name", "description"):
        data.pop(key, None)  # ours, whatever the model wrote
    return {"schema_version": SCHEMA_VERSION, "name": name, "description": description, **data}


def generate_trait(
    name: str,
    description: str,
    *,
    client: anthropic.Anthropic | None = None,
    model: str = DEFAULT_MODEL,
    api_key: str | None = None,
    base_url: str | None = None,
    max_attempts: int = 3,
    max_tokens: int = 16000,
    monitoring: bool = True,
    max_retries: int = 4,
    timeout: float = 900.0,
    report: GenerationReport | None = None,
) -> Trait:
    """Ask Claude for the full trait artifact and return it validated.

    ``client`` (an ``anthropic.Anthropic``) or ``api_key`` / ``$ANTHROPIC_API_KEY`` and ``base_url`` /
    ``$ANTHROPIC_BASE_URL``. ``monitoring`` also asks for graded system prompts and many-shot examples.
    ``max_retries`` is the SDK's retry count for transient HTTP errors. Pass a :class:`GenerationReport` to learn
    the attempts and tokens spent. Raises :class:`TraitGenerationError` after ``max_attempts`` invalid replies,
    :class:`~persona_lens.judges.claude.MissingAPIKeyError` without a key.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"trait name {name!r} is not valid; use only lowercase letters, digits, '_' and '-'")
    if not description.strip():
        raise ValueError("the trait description is empty; describe the trait in a paragraph")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    api = _make_client(client, api_key, base_url, max_retries, timeout)
    prompt = generation_prompt(name, description, monitoring)
    return _submit(
        api,
        model,
        prompt,
        trait_tool(monitoring),
        TOOL_NAME,
        lambda tool_input: trait_from_dict(_trait_data(name, description, tool_input), f"<generated {name}>"),
        what=f"trait {name!r}",
        max_attempts=max_attempts,
        max_tokens=max_tokens,
        timeout=timeout,
        report=report,
    )


def _submit(
    api: anthropic.Anthropic,
    model: str,
    prompt: str,
    tool: dict[str, Any],
    tool_name: str,
    build: Any,
    *,
    what: str,
    max_attempts: int,
    max_tokens: int,
    timeout: float,
    report: GenerationReport | None,
) -> Any:
    """Ask Claude to call ``tool_name`` with ``prompt``; ``build(tool_input)`` checks the input (raising an error
    with ``problems`` as ``(path, message)`` pairs) and builds the result. Problems go back to Claude as the tool's
    error result, up to ``max_attempts`` tries."""
    report = report if report is not None else GenerationReport()
    report.model = model
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    problems: list[str] = []
    for attempt in range(1, max_attempts + 1):
        reply = api.messages.create(
            model=model,
            max_tokens=max_tokens,
            messages=messages,
            tools=[tool],
            tool_choice={"type": "tool", "name": tool_name},
            timeout=timeout,
        )
        report.attempts = attempt
        report.usage.requests += 1
        report.usage.add_message(reply.usage)
        calls = [block for block in reply.content if block.type == "tool_use" and block.name == tool_name]
        if calls:
            try:
                result = build(calls[0].input)
            except ValueError as error:
                if not hasattr(error, "problems"):  # not a validation error (TraitError / RoleError): a bug
                    raise
                problems = [f"{path}: {message}" for path, message in error.problems]
            else:
                log.info("%s generated in %d attempt(s)", what, attempt)
                return result
        else:
            problems = [f"the reply did not call {tool_name} (stop_reason={reply.stop_reason})"]
        if reply.stop_reason == "max_tokens":
            problems.append(f"the reply was cut off at max_tokens={max_tokens}; write more concisely")
        log.warning("attempt %d/%d for %s was invalid: %s", attempt, max_attempts, what, "; ".join(problems))
        noun = what.split()[0]
        feedback = (
            f"The {noun} is not valid yet:\n"
            + "\n".join(f"- {p}" for p in problems)
            + f"\nFix every problem and call {tool_name} again with the complete, corrected {noun}."
        )
        messages.append({"role": "assistant", "content": _content_params(reply.content)})
        uses = [block for block in reply.content if block.type == "tool_use"]
        if uses:  # every tool call needs its result; the first one carries the feedback
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": use.id,
                            "is_error": True,
                            "content": feedback if index == 0 else "ignored: only the first call counts",
                        }
                        for index, use in enumerate(uses)
                    ],
                }
            )
        else:
            messages.append({"role": "user", "content": feedback})
    raise TraitGenerationError(
        f"Claude ({model}) gave no valid {what} in {max_attempts} attempt(s); last problems:\n"
        + "\n".join(f"  - {p}" for p in problems),
        problems,
    )


ROLE_TOOL_NAME = "submit_role"


def role_tool(n_prompts: int = 5) -> dict[str, Any]:
    """The ``submit_role`` tool definition: a role's system prompts, rubric and jailbreak templates."""
    properties: dict[str, Any] = {
        "system_prompts": _strings(n_prompts),
        "rubric": {"type": "string", "description": "judge prompt containing the slots {question} and {answer}"},
        "jailbreaks": _strings(minimum=2),
    }
    return {
        "name": ROLE_TOOL_NAME,
        "description": "Submit the complete role. Call it exactly once with every field filled in.",
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        },
    }


def role_generation_prompt(name: str, description: str, n_prompts: int = 5) -> str:
    """The instructions sent to Claude for one role of a persona space."""
    return "\n\n".join(
        [
            "I am mapping the characters a language model can play (a persona space): for each role I collect the "
            "model's activations while it answers ordinary questions in that role.",
            f"The role: {name}\nIts description: {description.strip()}",
            "Write the following and submit them with the submit_role tool.",
            f"1. system_prompts: {n_prompts} different system prompts that make a model fully become this character "
            '("You are ...") and answer every question in the role. Vary the wording.',
            "2. rubric: a prompt for a judge model that contains the literal slots {question} and {answer} (each once), "
            "explains the role, and asks for a score from 0 (answers as a plain assistant, no trace of the role) to 100 "
            "(fully in the role). It must tell the judge to answer REFUSAL for a clear refusal, and to respond with "
            "only the number.",
            "3. jailbreaks: at least 2 user messages that push an assistant into the role from the user's side (\"From "
            'now on you are ..."), each containing the literal slot {question} where the question goes.',
            "Write everything in English. Keep each prompt concise.",
        ]
    )


def generate_role(
    name: str,
    description: str,
    *,
    client: anthropic.Anthropic | None = None,
    model: str = DEFAULT_MODEL,
    api_key: str | None = None,
    base_url: str | None = None,
    n_prompts: int = 5,
    max_attempts: int = 3,
    max_tokens: int = 8000,
    max_retries: int = 4,
    timeout: float = 900.0,
    report: GenerationReport | None = None,
) -> Any:
    """Ask Claude for a role (:mod:`persona_lens.traits.roles`) and return it validated, as :func:`generate_trait`
    does for a trait; bring hundreds of roles by calling it once per name and saving each with ``save_role``."""
    from persona_lens.traits.roles import ROLE_SCHEMA_VERSION, role_from_dict

    if not _NAME.fullmatch(name):
        raise ValueError(f"role name {name!r} is not valid; use only lowercase letters, digits, '_' and '-'")
    if not description.strip():
        raise ValueError("the role description is empty; describe the character in a paragraph")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")

    def build(tool_input: Any) -> Any:
        data = dict(tool_input) if isinstance(tool_input, dict) else {"<input>": tool_input}
        for key in ("schema_version", "name", "description", "default", "rule"):
            data.pop(key, None)
        return role_from_dict(
            {"schema_version": ROLE_SCHEMA_VERSION, "name": name, "description": description, **data},
            f"<generated {name}>",
        )

    api = _make_client(client, api_key, base_url, max_retries, timeout)
    return _submit(
        api,
        model,
        role_generation_prompt(name, description, n_prompts),
        role_tool(n_prompts),
        ROLE_TOOL_NAME,
        build,
        what=f"role {name!r}",
        max_attempts=max_attempts,
        max_tokens=max_tokens,
        timeout=timeout,
        report=report,
    )
