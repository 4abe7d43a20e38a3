"""An OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, ``transformers serve``) as a generation engine.

Replies that need no hooks (extraction under persona system prompts, unsteered baselines) can come from a serving
engine. The server returns text; we locate it in the re-tokenized conversation exactly as for a dataset's replies
(:func:`persona_lens.core.chat.encode_conversation`), so activations are read at exact token boundaries by our own
model. Before any reply is used, :meth:`OpenAIEngine.check_matches` makes sure the server serves the model we read
activations from: its tokenizer and chat template must give our prompt token count, and the name it serves is
recorded. Only the standard library is used (``urllib``); requests run ``concurrency`` at a time.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from persona_lens.core.chat import Message, TemplateBoundaryError, encode_conversation, encode_prompt
from persona_lens.core.errors import Error
from persona_lens.core.generation import Generation

__all__ = ["OpenAIEngine", "EngineError", "EngineMismatch"]

_PROBE: list[Message] = [{"role": "system", "content": "You are a careful assistant."},
                         {"role": "user", "content": "Count the tokens of this question, please: 3, 17, 2049."}]


class EngineError(Error, RuntimeError):
    """The server could not be reached or answered something unusable."""


class EngineMismatch(Error, ValueError):
    """The server serves another model (or tokenizer / chat template) than the one we read activations from."""


class OpenAIEngine:
    """A client of ``url`` (``http://host:port``, with or without ``/v1``).

    ``model``: the served model name to ask for; default the only one the server lists (an error if it lists
    several).
    """

    def __init__(self, url: str, *, model: str | None = None, concurrency: int = 8, timeout: float = 900.0) -> None:
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self._model = model
        self._checked: set[int] = set()

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:500]
            raise EngineError(f"{self.base}{path} answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise EngineError(f"cannot reach the generation engine at {self.base}{path}: {error}. Start one (e.g. "
                              "scripts/serve_transformers.sh MODEL PORT) or fix --engine") from None

    def served_models(self) -> list[str]:
        """The model names the server lists (``GET /v1/models``)."""
        return [str(entry["id"]) for entry in self._request("/models").get("data", [])]

    @property
    def model(self) -> str:
        if self._model is None:
            served = self.served_models()
            if len(served) != 1:
                raise EngineMismatch(f"the engine at {self.base} serves {served or 'no model'}; name the one to use "
                                     "(--engine-model / OpenAIEngine(model=...))")
            self._model = served[0]
        return self._model

    def chat(self, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> dict[str, Any]:
        """One chat completion: ``{"text", "finish_reason", "prompt_tokens"}``."""
        payload: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                                   "temperature": temperature, "top_p": top_p}
        if seed is not None:
            payload["seed"] = seed
        answer = self._request("/chat/completions", payload)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"{self.base}/chat/completions answered no reply: {str(answer)[:300]}") from None
        usage = answer.get("usage") or {}
        return {"text": text, "finish_reason": choice.get("finish_reason"),
                "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")}

    def check_matches(self, model: Any) -> None:
        """Raise :class:`EngineMismatch` unless the server tokenizes our probe conversation as ``model`` does.

        The served name is listed by ``/v1/models`` (checked to exist); the prompt token count the server reports
        must equal ours (same tokenizer and chat template), else activations would be read on other tokens.
        """
        if id(model) in self._checked:
            return
        served = self.served_models()
        if self.model not in served:
            raise EngineMismatch(f"the engine at {self.base} does not serve {self.model!r} (it serves {served})")
        ours = len(encode_prompt(model.tokenizer, _PROBE))
        theirs = self.chat(_PROBE, max_tokens=1)["prompt_tokens"]
        if theirs is None:
            raise EngineMismatch(f"the engine at {self.base} reports no usage.prompt_tokens, so we cannot check that "
                                 f"it serves {model.cfg.model_name!r}; use a server that reports usage")
        if int(theirs) != ours:
            raise EngineMismatch(
                f"the engine at {self.base} serves {self.model!r}, which tokenizes a probe conversation into "
                f"{theirs} tokens where {model.cfg.model_name!r} (the model we read activations from) makes {ours}: "
                "another model, tokenizer or chat template. Serve the same model (e.g. scripts/serve_transformers.sh "
                f"{model.cfg.model_name}) or load the served one with --model")
        self._checked.add(id(model))

    def generate(self, model: Any, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seeds: Sequence[int] | None = None) -> Generation:
        """Replies from the server, as :func:`persona_lens.core.generation.generate` returns them.

        ``response_ids`` are the reply's tokens located in ``model``'s re-tokenized conversation; ``stopped`` is
        the server's ``finish_reason == "stop"`` (or a stop token as the last allowed token: :func:`_stopped`).
        """
        self.check_matches(model)
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)  # type: ignore[list-item]

        def one(index: int) -> dict[str, Any]:
            return self.chat(conversations[index], max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             seed=seeds[index])

        with ThreadPoolExecutor(self.concurrency) as pool:
            answers = list(pool.map(one, range(len(conversations))))
        prompts = [encode_prompt(model.tokenizer, c) for c in conversations]
        response_ids = [_locate(model.tokenizer, c, a["text"], len(p))
                        for c, a, p in zip(conversations, answers, prompts)]
        return Generation([a["text"] for a in answers], prompts, response_ids,
                          [_stopped(a, ids) for a, ids in zip(answers, response_ids)])


def _stopped(answer: dict[str, Any], response_ids: Sequence[int]) -> bool:
    """Whether the reply ended with a stop token, as our ``generate`` says it.

    A server that generates the stop token as the last allowed token reports ``"length"`` (seen with
    ``transformers serve``), where our ``generate`` reports a stop: it counted one completion token more than the
    reply's text holds, and that token was the (skipped) stop token.
    """
    if answer["finish_reason"] == "stop":
        return True
    count = answer.get("completion_tokens")
    return answer["finish_reason"] == "length" and count is not None and len(response_ids) < int(count)


def _locate(tokenizer: Any, messages: Sequence[Message], text: str, prompt_length: int) -> list[int]:
    """The reply's token ids in the re-tokenized conversation; they must start right after the prompt."""
    if not text.strip():
        return []
    encoded = encode_conversation(tokenizer, messages, text)
    if encoded.response_start != prompt_length:
        raise TemplateBoundaryError(
            f"the engine's reply {text[:40]!r} does not start right after the prompt once re-tokenized "
            f"(token {encoded.response_start}, prompt ends at {prompt_length}): leading whitespace or a template "
            "that rewrites replies")
    return list(encoded.input_ids[prompt_length:encoded.response_end])
