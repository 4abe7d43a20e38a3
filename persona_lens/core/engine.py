"""An OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, ``transformers serve``) as a generation engine.

Replies that need no hooks (extraction under persona system prompts, unsteered baselines) can come from a serving
engine. The server returns text; we locate it in the re-tokenized conversation exactly as for a dataset's replies
(:func:`persona_lens.core.chat.encode_conversation`), so activations are read at exact token boundaries by our own
model. Before any reply is used, :meth:`OpenAIEngine.check_matches` makes sure the server serves the model we read
activations from: its tokenizer and chat template must give our prompt token count, and the name it serves is
recorded (:meth:`OpenAIEngine.settings`, kept in a run's ``settings.json``). Only the standard library is used
(``urllib``); requests run ``concurrency`` at a time.

A server is trusted with nothing it cannot show (README "Reliability", ``tests/core/test_engine_faults.py``):

* every reply is checked before it is kept: a ``null`` content, an empty one (unless the server says the model
  stopped at its first token: ``finish_reason "stop"`` after at most one token), more tokens than ``max_tokens`` (as the
  server counts them and as our tokenizer re-counts the text), a prompt token count other than ours, or another
  model's name than the one asked for (unless ``allow_other_name``) is an :class:`EngineError` /
  :class:`EngineMismatch`, and the whole generate call keeps nothing;
* a 429, a 5xx or a dropped connection is retried ``retries`` times with exponential backoff (``Retry-After``
  honoured up to 30 s); a body that is not the JSON of a chat completion, another 4xx, or a request that gets no
  answer within ``timeout`` seconds (default: 60 s plus 0.5 s per requested token) ends in one sentence naming the
  server;
* requests run on daemon threads while this thread waits in short steps, printing progress when an answer is slow
  (every ``progress_every`` seconds): Ctrl-C ends the command at once, even during a request that hangs. The timeout
  counts from the last answer (a server that serves requests one at a time keeps the later ones queued, and they
  are not cut short while answers keep coming); one request's connection gives up after ``timeout * concurrency``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from persona_lens.core.chat import Message, TemplateBoundaryError, encode_conversation, encode_prompt
from persona_lens.core.errors import Error
from persona_lens.core.generation import Generation

__all__ = ["OpenAIEngine", "EngineError", "EngineMismatch", "request_timeout"]

T = TypeVar("T")

_PROBE: list[Message] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Count the tokens of this question, please: 3, 17, 2049."},
]
_TRANSIENT_HTTP = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER = 30.0


class EngineError(Error, RuntimeError):
    """The server could not be reached or answered something unusable (after the retries a transient fault gets)."""


class EngineMismatch(Error, ValueError):
    """The server serves another model (or tokenizer / chat template) than the one we read activations from."""


def request_timeout(max_tokens: int) -> float:
    """The default time a request may take: 60 s plus 0.5 s per requested token (a slow 2 tokens/s server)."""
    return 60.0 + 0.5 * max_tokens


class _Transient(Exception):
    """A fault worth another try (429, 5xx, dropped connection); ``wait`` is the server's Retry-After, if any."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER) if math.isfinite(seconds) else None


class OpenAIEngine:
    """A client of ``url`` (``http://host:port``, with or without ``/v1``).

    ``model``: the served model name to ask for; default the only one the server lists (an error if it lists
    several). ``timeout``: seconds without any answer before giving up (default :func:`request_timeout` of the
    requests' ``max_tokens``).
    ``retries`` / ``backoff``: tries after a transient fault, waiting ``backoff * 2**k`` seconds.
    ``allow_other_name``: accept replies that name another model than the one asked for (a server reporting an
    alias). ``progress_every``: seconds between "still waiting" lines on stderr (None: silent).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 8,
        timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        allow_other_name: bool = False,
        progress_every: float | None = 10.0,
    ) -> None:
        from persona_lens.core import validate

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.concurrency = validate.positive_int(concurrency, "concurrency")
        self.timeout = None if timeout is None else validate.finite(timeout, "timeout", above=0)
        self.retries = validate.non_negative_int(retries, "retries")
        self.backoff = validate.finite(backoff, "backoff", minimum=0)
        self.allow_other_name = allow_other_name
        self.progress_every = progress_every
        self._model = model
        self._checked: set[int] = set()

    # ------------------------------------------------------------------------------------------------ transport
    def _timeout(self, max_tokens: int | None) -> float:
        if self.timeout is not None:
            return self.timeout
        return request_timeout(max_tokens or 0)

    def _once(self, path: str, data: bytes | None, timeout: float) -> dict[str, Any]:
        """One HTTP request; the JSON object it answers, or :class:`_Transient` / :class:`EngineError`."""
        where = f"the engine at {self.base} ({path})"
        request = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + timeout
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                chunks = []
                while chunk := response.read(65536):  # a server that trickles bytes still meets the deadline
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError
                body = b"".join(chunks)
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:300].strip()
            if error.code in _TRANSIENT_HTTP:
                raise _Transient(
                    f"{where} answered HTTP {error.code} ({detail or error.reason})",
                    _retry_after(error.headers.get("Retry-After")),
                ) from None
            raise EngineError(
                f"{where} answered HTTP {error.code}: {detail or error.reason}; check --engine, "
                "--engine-model and the server's log"
            ) from None
        except TimeoutError:
            raise EngineError(
                f"{where} gave no complete answer within {timeout:g} s; the server is stuck or "
                "overloaded: check it, or allow more time with --engine-timeout SECONDS"
            ) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise EngineError(
                    f"{where} gave no complete answer within {timeout:g} s; the server is stuck or "
                    "overloaded: check it, or allow more time with --engine-timeout SECONDS"
                ) from None
            raise _Transient(f"cannot reach {where}: {error.reason}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as error:  # dropped, reset, cut short
            raise _Transient(f"{where} dropped the connection ({type(error).__name__}: {error})") from None
        try:
            answer = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise EngineError(
                f"{where} answered {len(body)} bytes that are not JSON ({body[:60]!r}); --engine must "
                "be an OpenAI-compatible server"
            ) from None
        if not isinstance(answer, dict):
            raise EngineError(
                f"{where} answered JSON that is not an object ({body[:60]!r}); --engine must be an "
                "OpenAI-compatible server"
            )
        return answer

    def _request(
        self, path: str, payload: dict[str, Any] | None = None, *, max_tokens: int | None = None
    ) -> dict[str, Any]:
        """One request with its retries: a transient fault is tried again ``retries`` times with backoff."""
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        timeout = self._timeout(max_tokens) * self.concurrency  # queued behind the others on a one-at-a-time server
        for attempt in range(self.retries + 1):
            try:
                return self._once(path, data, timeout)
            except _Transient as fault:
                if attempt == self.retries:
                    hint = (
                        "Start one (e.g. scripts/serve_transformers.sh MODEL PORT) or fix --engine"
                        if str(fault).startswith("cannot reach")
                        else "check the server's log"
                    )
                    raise EngineError(f"{fault}, {self.retries + 1} tries; {hint}") from None
                time.sleep(fault.wait if fault.wait is not None else self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _run(self, calls: Sequence[Callable[[], T]], what: str, max_tokens: int | None = None) -> list[T]:
        """Run ``calls`` on ``concurrency`` daemon threads; this thread waits in short steps (Ctrl-C ends it at
        once), says every ``progress_every`` seconds what it waits for, raises the first failure, and gives up when
        no answer came for the timeout of a ``max_tokens`` request."""
        results: list[Any] = [None] * len(calls)
        errors: list[BaseException] = []
        done = threading.Semaphore(0)
        lock = threading.Lock()
        queue = list(range(len(calls)))[::-1]

        def worker() -> None:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    index = queue.pop()
                try:
                    results[index] = calls[index]()
                except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
                    with lock:
                        errors.append(error)
                done.release()

        for _ in range(min(self.concurrency, len(calls))):
            threading.Thread(target=worker, daemon=True, name="persona_lens-engine").start()
        start = last_word = last_answer = time.monotonic()
        limit = self._timeout(max_tokens)
        finished = 0
        while finished < len(calls):
            if done.acquire(timeout=0.1):
                finished += 1
                last_answer = time.monotonic()
            if errors:
                raise errors[0]
            now = time.monotonic()
            if finished < len(calls) and now - last_answer > limit:
                raise EngineError(
                    f"the engine at {self.base} gave no complete answer within {limit:g} s ({finished} "
                    f"of {len(calls)} {what} answered); the server is stuck or overloaded: check it, "
                    "or allow more time with --engine-timeout SECONDS"
                )
            if self.progress_every is not None and now - last_word >= self.progress_every:
                last_word = now
                print(
                    f"waiting for the engine at {self.base}: {finished} of {len(calls)} {what} answered after "
                    f"{now - start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        return results

    # ---------------------------------------------------------------------------------------------- the API
    def served_models(self) -> list[str]:
        """The model names the server lists (``GET /v1/models``)."""
        answer = self._run([lambda: self._request("/models")], "model list")[0]
        data = answer.get("data")
        if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in data):
            raise EngineError(
                f"the engine at {self.base} (/models) answered no model list ({str(answer)[:120]}); "
                "--engine must be an OpenAI-compatible server"
            )
        return [entry["id"] for entry in data]

    @property
    def model(self) -> str:
        if self._model is None:
            served = self.served_models()
            if len(served) != 1:
                raise EngineMismatch(
                    f"the engine at {self.base} serves {served or 'no model'}; name the one to use "
                    "(--engine-model / OpenAIEngine(model=...))"
                )
            self._model = served[0]
        return self._model

    def settings(self) -> dict[str, str]:
        """What a run records of the engine (its ``settings.json``): the served model name its replies came from."""
        return {"engine_model": self.model}

    def _chat_request(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float, top_p: float, seed: int | None
    ) -> dict[str, Any]:
        """One chat completion, checked: ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            payload["seed"] = seed
        answer = self._request("/chat/completions", payload, max_tokens=max_tokens)
        where = f"the engine at {self.base} (/chat/completions)"
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EngineError(
                f"{where} answered no reply ({str(answer)[:200]}); --engine must be an OpenAI-compatible server"
            ) from None
        raw_usage = answer.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        if not isinstance(text, str) or (not text and not _ended_at_once(choice, usage)):
            raise EngineError(
                f"{where} answered an empty reply (content {text!r}, finish_reason "
                f"{choice.get('finish_reason')!r}, completion_tokens {usage.get('completion_tokens')!r});"
                " nothing of this call is kept. The server failed to generate: check its log (an empty "
                "reply is kept only when the server says it stopped at the first token)"
            )
        name = answer.get("model")
        if isinstance(name, str) and name != self.model and not self.allow_other_name:
            raise EngineMismatch(
                f"{where} answered as model {name!r}, but {self.model!r} was asked for: another "
                "model answered. Serve the model asked for, or pass --engine-any-name if the server "
                "reports an alias"
            )
        counts = {}
        for field in ("prompt_tokens", "completion_tokens"):
            value = usage.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EngineError(
                    f"{where} answered usage.{field} = {value!r}, not a token count; --engine must be "
                    "an OpenAI-compatible server"
                )
            counts[field] = value
        if counts["completion_tokens"] is not None and counts["completion_tokens"] > max_tokens:
            raise EngineError(
                f"{where} answered a reply of {counts['completion_tokens']} tokens to a request for at "
                f"most {max_tokens}; nothing of this call is kept. The server ignores max_tokens: fix "
                "its settings or use another server"
            )
        return {"text": text, "finish_reason": choice.get("finish_reason"), **counts}

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """One chat completion, checked: ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``."""
        return self._run(
            [
                lambda: self._chat_request(
                    messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
                )
            ],
            "reply",
            max_tokens,
        )[0]

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
            raise EngineMismatch(
                f"the engine at {self.base} reports no usage.prompt_tokens, so we cannot check that "
                f"it serves {model.cfg.model_name!r}; use a server that reports usage"
            )
        if int(theirs) != ours:
            raise EngineMismatch(
                f"the engine at {self.base} serves {self.model!r}, which tokenizes a probe conversation into "
                f"{theirs} tokens where {model.cfg.model_name!r} (the model we read activations from) makes {ours}: "
                "another model, tokenizer or chat template. Serve the same model (e.g. scripts/serve_transformers.sh "
                f"{model.cfg.model_name}) or load the served one with --model"
            )
        self._checked.add(id(model))

    def generate(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
    ) -> Generation:
        """Replies from the server, as :func:`persona_lens.core.generation.generate` returns them.

        ``response_ids`` are the reply's tokens located in ``model``'s re-tokenized conversation; ``stopped`` is
        the server's ``finish_reason == "stop"`` (or a stop token as the last allowed token: :func:`_stopped`).
        Every reply is checked (see the module): one that breaks the request's limits fails the whole call, so a
        caller that stores calls keeps nothing of it.
        """
        self.check_matches(model)
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)  # type: ignore[list-item]
        calls = [
            lambda c=c, s=s: self._chat_request(
                c, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=s
            )
            for c, s in zip(conversations, seeds)
        ]
        answers = self._run(calls, "replies", max_new_tokens)
        prompts = [encode_prompt(model.tokenizer, c) for c in conversations]
        where = f"the engine at {self.base} (/chat/completions)"
        for answer, prompt in zip(answers, prompts):
            if answer["prompt_tokens"] is not None and answer["prompt_tokens"] != len(prompt):
                raise EngineMismatch(
                    f"{where} counted {answer['prompt_tokens']} prompt tokens where "
                    f"{model.cfg.model_name!r} makes {len(prompt)}: another tokenizer or chat "
                    "template answered this request; serve the same model"
                )
        response_ids = [
            _locate(model.tokenizer, c, a["text"], len(p), self.base)
            for c, a, p in zip(conversations, answers, prompts)
        ]
        for ids, answer in zip(response_ids, answers):
            if len(ids) > max_new_tokens:
                raise EngineError(
                    f"{where} answered a reply of {len(ids)} tokens (re-tokenized by "
                    f"{model.cfg.model_name!r}) to a request for at most {max_new_tokens}: "
                    f"{answer['text'][:40]!r}...; nothing of this call is kept. The server ignores "
                    "max_tokens or serves another tokenizer"
                )
        return Generation(
            [a["text"] for a in answers],
            prompts,
            response_ids,
            [_stopped(a, ids) for a, ids in zip(answers, response_ids)],
        )


def _ended_at_once(choice: dict[str, Any], usage: dict[str, Any]) -> bool:
    """Whether an empty reply is the model's own (its first token ended the turn): the server says it stopped
    (``finish_reason == "stop"``) after at most one completion token. Anything else empty is a server failure."""
    count = usage.get("completion_tokens")
    return (
        choice.get("finish_reason") == "stop"
        and isinstance(count, int)
        and not isinstance(count, bool)
        and 0 <= count <= 1
    )


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


def _locate(tokenizer: Any, messages: Sequence[Message], text: str, prompt_length: int, base: str = "") -> list[int]:
    """The reply's token ids in the re-tokenized conversation; they must start right after the prompt."""
    if not text.strip():
        return []
    encoded = encode_conversation(tokenizer, messages, text)
    if encoded.response_start != prompt_length:
        start = text[: len(text) - len(text.lstrip())]
        found = (
            f"the reply starts with {start!r} (whitespace the chat template strips)"
            if start
            else "the chat template rewrites the reply"
        )
        raise TemplateBoundaryError(
            f"the engine{' at ' + base if base else ''} answered {text[:40]!r}, which does not start right after the "
            f"prompt once re-tokenized (token {encoded.response_start}, prompt ends at {prompt_length}): {found}, so "
            "its tokens cannot be located exactly; nothing of this call is kept"
        )
    return list(encoded.input_ids[prompt_length : encoded.response_end])
