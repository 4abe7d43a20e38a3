"""`ClaudeJudge`: Claude scores (question, answer) pairs against a rubric through the Anthropic API.

The paper's judge read one output token's top-20 logprobs; the Anthropic API gives no logprobs, so Claude is asked
for the number itself (a few output tokens) and the reply is parsed: a number 0-100 is the score, ``REFUSAL`` is
None, anything else is None with a logged reason (never an exception). Temperature 0 is requested; newer models
reject ``temperature`` ("deprecated for this model"), and then the judge drops it and carries on without.

Requests run concurrently (``max_concurrency``), with our own bounded retries (exponential backoff with jitter,
honouring ``retry-after``) on rate limits, server errors, overload, timeouts and connection errors; an item that
still fails gets None and a logged reason, and the rest of the job goes on. Large jobs go through the Message
Batches API (half price) when ``use_batches`` allows.

Prompt caching: the rubric is split at its first slot. The fixed text before it (the instructions) is sent as the
system prompt, marked ``cache_control: ephemeral``; the rest of the rubric, with the question and answer filled in,
is the user turn. The API caches only prompts above a minimum length (1024 tokens for Sonnet/Opus, 2048 for
Haiku), so short rubrics simply are not cached; marking them costs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

import anthropic

from persona_lens.core.errors import Error
from persona_lens.judges.base import JudgeAuthError, Score, Verdict, check_rubric

__all__ = [
    "ClaudeJudge",
    "DEFAULT_MODEL",
    "Usage",
    "Price",
    "PRICES",
    "price_for",
    "estimate_cost",
    "parse_reply",
    "MissingAPIKeyError",
    "require_api_key",
    "API_KEY_HELP",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-4-5"
"""The default judge model."""

MAX_TOKENS = 16
"""Room for "100" or "REFUSAL" and a little slack; a longer reply is not a score anyway."""

API_KEY_HELP = (
    "no Anthropic API key found. Create one at https://console.anthropic.com/settings/keys and set it in the "
    "environment before running:  export ANTHROPIC_API_KEY=sk-ant-...  (or pass api_key=... or client=...)"
)

T = TypeVar("T")


class MissingAPIKeyError(Error, RuntimeError):
    """No API key: neither ``api_key``, ``ANTHROPIC_API_KEY`` nor a client was given."""


def require_api_key(api_key: str | None = None, client: Any = None) -> str | None:
    """The key to use (``api_key``, else ``$ANTHROPIC_API_KEY``); raises :class:`MissingAPIKeyError` if neither
    exists and no ``client`` was given."""
    key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
    if key is None and client is None:
        raise MissingAPIKeyError(API_KEY_HELP)
    return key


# ------------------------------------------------------------------------------------------ usage and prices
@dataclass
class Usage:
    """Tokens and HTTP requests spent (retries and batch polls included); cache writes and reads are counted apart
    from plain input tokens, as the API reports them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    requests: int = 0

    def add_message(self, usage: Any) -> None:
        """Add the ``usage`` object of one API message."""
        self.input_tokens += getattr(usage, "input_tokens", 0) or 0
        self.output_tokens += getattr(usage, "output_tokens", 0) or 0
        self.cache_read_input_tokens += getattr(usage, "cache_read_input_tokens", 0) or 0
        self.cache_creation_input_tokens += getattr(usage, "cache_creation_input_tokens", 0) or 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Price:
    """USD per million tokens. Cache writes (5-minute cache) cost 1.25x input, cache reads 0.1x input."""

    input: float
    output: float

    @property
    def cache_write(self) -> float:
        return self.input * 1.25

    @property
    def cache_read(self) -> float:
        return self.input * 0.1


PRICES: tuple[tuple[str, Price], ...] = (
    # Anthropic list prices, USD per million tokens, as of late 2025 (Sonnet: prompts under 200k tokens).
    # First matching prefix wins; a model not listed (a newer one) has no price rather than a guessed one.
    ("claude-opus-4-6", Price(5.0, 25.0)),
    ("claude-opus-4-5", Price(5.0, 25.0)),
    ("claude-opus-4-1", Price(15.0, 75.0)),
    ("claude-opus-4-0", Price(15.0, 75.0)),
    ("claude-opus-4-2025", Price(15.0, 75.0)),
    ("claude-sonnet-4-6", Price(3.0, 15.0)),
    ("claude-sonnet-4-5", Price(3.0, 15.0)),
    ("claude-sonnet-4-0", Price(3.0, 15.0)),
    ("claude-sonnet-4-2025", Price(3.0, 15.0)),
    ("claude-haiku-4-5", Price(1.0, 5.0)),
    ("claude-3-7-sonnet", Price(3.0, 15.0)),
    ("claude-3-5-sonnet", Price(3.0, 15.0)),
    ("claude-3-5-haiku", Price(0.8, 4.0)),
    ("claude-3-opus", Price(15.0, 75.0)),
    ("claude-3-haiku", Price(0.25, 1.25)),
)
BATCH_DISCOUNT = 0.5
"""Message Batches cost half the interactive price."""


def price_for(model: str) -> Price | None:
    """The price of ``model`` (ids with a date suffix match too), or None when unknown."""
    for prefix, price in PRICES:
        if model.startswith(prefix):
            return price
    return None


def estimate_cost(usage: Usage, model: str, *, batch: bool = False) -> float | None:
    """Estimated USD for ``usage`` on ``model``; None for a model without a known price."""
    price = price_for(model)
    if price is None:
        return None
    cost = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1e6
    return cost * (BATCH_DISCOUNT if batch else 1.0)


# ------------------------------------------------------------------------------------------------- parsing
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_reply(text: str, stop_reason: str | None = None) -> Verdict:
    """Turn a judge reply into a verdict: a number 0-100 -> score, ``REFUSAL`` -> None, anything else -> None.

    Surrounding whitespace, quotes, markdown emphasis and one trailing full stop are ignored. All outcomes are
    cacheable: the model answered, even if unhelpfully.
    """
    core = text.strip().strip("*_`\"'").strip()
    core = core[:-1].rstrip() if core.endswith(".") else core
    if core.upper() == "REFUSAL":
        return Verdict(None, "refusal", True)
    if _NUMBER.fullmatch(core):
        value = float(core)
        if 0.0 <= value <= 100.0:
            return Verdict(value, "", True)
        return Verdict(None, f"number out of range 0-100: {core}", True)
    if stop_reason == "refusal":
        return Verdict(None, "refusal (stop_reason=refusal)", True)
    shown = text if len(text) <= 80 else text[:77] + "..."
    if stop_reason == "max_tokens":
        return Verdict(None, f"reply cut off at max_tokens without a number: {shown!r}", True)
    if not text.strip():
        return Verdict(None, "empty reply", True)
    return Verdict(None, f"no number in reply: {shown!r}", True)


def _verdict_of_message(message: Any) -> Verdict:
    text = "".join(getattr(block, "text", "") for block in message.content if getattr(block, "type", "") == "text")
    return parse_reply(text, getattr(message, "stop_reason", None))


# --------------------------------------------------------------------------------------------- retrying
_RETRYABLE = (
    anthropic.RateLimitError,
    anthropic.InternalServerError,
    anthropic.APIConnectionError,
    json.JSONDecodeError,
)
# InternalServerError covers 500, 503, 504 and 529 (overloaded); APIConnectionError covers timeouts;
# JSONDecodeError is a response body cut short or garbled on the way.


class _GaveUp(Exception):
    """A request failed for good (retries spent, or an error retrying cannot fix)."""


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {str(error)[:120]}"


def _rejects_temperature(error: BaseException | None) -> bool:
    return isinstance(error, anthropic.BadRequestError) and "temperature" in str(error)


def _run_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop already runs here (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="claude-judge") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ the judge
class ClaudeJudge:
    """Scores items with Claude. See the module docstring for the prompt, retries, caching and batches.

    ``client``: an ``anthropic.Anthropic`` (its key and base URL are reused) or ``anthropic.AsyncAnthropic`` (used
    as is; keep to one event loop). Without a client, ``api_key`` / ``$ANTHROPIC_API_KEY`` and ``base_url`` /
    ``$ANTHROPIC_BASE_URL`` are used. ``temperature``: 0 by default, None to leave it out (it is left out by
    itself once the model rejects it). ``use_batches``: True, False, or ``"auto"`` (batches for jobs of more than
    ``batch_threshold`` distinct items). ``timeout`` is per request, in seconds; ``batch_timeout`` bounds the wait
    for a batch (the API ends every batch within 24 h).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        client: anthropic.Anthropic | anthropic.AsyncAnthropic | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        use_batches: bool | Literal["auto"] = "auto",
        batch_threshold: int = 200,
        poll_interval: float = 30.0,
        batch_timeout: float = 24 * 3600.0,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        max_tokens: int = MAX_TOKENS,
        temperature: float | None = 0.0,
    ) -> None:
        self._api_key = require_api_key(api_key, client)
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        if use_batches not in (True, False, "auto"):
            raise ValueError(f"use_batches must be True, False or 'auto', not {use_batches!r}")
        self.model = model
        self._client = client
        self._base_url = base_url
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.use_batches = use_batches
        self.batch_threshold = batch_threshold
        self.poll_interval = poll_interval
        self.batch_timeout = batch_timeout
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._usage = Usage()
        self._batch_usage = Usage()
        self._lock = threading.Lock()
        self._credentials_accepted = False

    @property
    def judge_id(self) -> str:
        return f"claude:{self.model}"

    def __repr__(self) -> str:
        return f"ClaudeJudge(model={self.model!r})"

    # ------------------------------------------------------------------------------------ accounting
    @property
    def usage(self) -> Usage:
        """Everything spent so far, interactive and batch requests together."""
        with self._lock:
            return self._usage + self._batch_usage

    @property
    def batch_usage(self) -> Usage:
        """The part of :attr:`usage` spent through the Message Batches API."""
        with self._lock:
            return Usage(**vars(self._batch_usage))

    @property
    def estimated_cost_usd(self) -> float | None:
        """Estimated USD spent so far (batch requests at half price); None for a model without a known price."""
        with self._lock:
            interactive = estimate_cost(self._usage, self.model)
            batch = estimate_cost(self._batch_usage, self.model, batch=True)
        return None if interactive is None or batch is None else interactive + batch

    def _count_request(self, batch: bool = False) -> None:
        with self._lock:
            (self._batch_usage if batch else self._usage).requests += 1

    def _count_message(self, message: Any, batch: bool = False) -> None:
        with self._lock:
            (self._batch_usage if batch else self._usage).add_message(getattr(message, "usage", None))

    # ---------------------------------------------------------------------------------------- prompt
    @staticmethod
    def split_rubric(rubric: str) -> tuple[str, str]:
        """(cached system text, user template): the rubric cut at its first slot."""
        check_rubric(rubric)
        cut = min(rubric.index("{question}"), rubric.index("{answer}"))
        system = rubric[:cut].rstrip()
        if not system.strip():
            return "", rubric
        return system, rubric[cut:]

    def request_params(self, rubric: str, question: str, answer: str) -> dict[str, Any]:
        """The Messages API parameters that judge one item."""
        system, template = self.split_rubric(rubric)
        if system:  # a rubric starting with a slot has nothing fixed to cache
            template = template.lstrip("\n")
        user = template.replace("{question}", question).replace("{answer}", answer)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": user}],
        }
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if system:
            params["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        return params

    # --------------------------------------------------------------------------------------- scoring
    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        """Scores 0-100 (or None) for ``items``, in input order."""
        return [v.score for v in self.score_detailed(rubric, items)]

    def score_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Like :meth:`score`, with the reason for each None and whether it is final (cacheable)."""
        check_rubric(rubric)
        items = list(items)
        return _run_coroutine(lambda: self.ascore_detailed(rubric, items))

    async def ascore(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        """:meth:`score` for async code."""
        return [v.score for v in await self.ascore_detailed(rubric, items)]

    async def ascore_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """:meth:`score_detailed` for async code."""
        check_rubric(rubric)
        items = [(str(q), str(a)) for q, a in items]
        unique = list(dict.fromkeys(items))
        if not unique:
            return []
        params = [self.request_params(rubric, q, a) for q, a in unique]
        client, owned = self._async_client()
        try:
            if self.use_batches is True or (self.use_batches == "auto" and len(unique) > self.batch_threshold):
                verdicts = await self._score_batch(client, params)
            else:
                verdicts = await self._score_interactive(client, params, list(range(len(params))))
        finally:
            if owned:
                await client.close()
        for index, verdict in enumerate(verdicts):
            if verdict.score is None:
                log.warning(
                    "%s: no score for item %d (question %r): %s",
                    self.judge_id,
                    index,
                    unique[index][0][:60],
                    verdict.reason,
                )
        by_item = dict(zip(unique, verdicts))
        return [by_item[item] for item in items]

    def _async_client(self) -> tuple[anthropic.AsyncAnthropic, bool]:
        """(client, whether we own it and must close it); SDK retries are off: we retry ourselves."""
        if isinstance(self._client, anthropic.AsyncAnthropic):
            return self._client.with_options(max_retries=0, timeout=self.timeout), False
        if isinstance(self._client, anthropic.Anthropic):
            source = self._client
            return anthropic.AsyncAnthropic(
                api_key=source.api_key,
                auth_token=source.auth_token,
                base_url=str(source.base_url),
                max_retries=0,
                timeout=self.timeout,
            ), True
        return anthropic.AsyncAnthropic(
            api_key=self._api_key, base_url=self._base_url, max_retries=0, timeout=self.timeout
        ), True

    async def _with_retries(self, call: Callable[[], Awaitable[T]], what: str, *, batch: bool = False) -> T:
        """``await call()``, retrying transient failures; raises :class:`_GaveUp` with the reason otherwise."""
        for attempt in range(self.max_retries + 1):
            self._count_request(batch)
            try:
                return await call()
            except _RETRYABLE as error:
                if attempt == self.max_retries:
                    raise _GaveUp(f"{what} failed after {attempt + 1} attempts: {_describe(error)}") from error
                delay = self._backoff(attempt, _retry_after(error))
                log.info("%s: %s; retrying in %.2f s", what, _describe(error), delay)
                await asyncio.sleep(delay)
            except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as error:
                raise JudgeAuthError(
                    f"{self.judge_id}: the Anthropic API refused the credentials ({_describe(error)}): no reply can be "
                    f"judged, so the run stops here. Check ANTHROPIC_API_KEY (and that the key may use "
                    f"{self.model}); scores made so far are kept"
                ) from None
            except anthropic.APIError as error:  # 4xx other than 429: retrying cannot fix it
                raise _GaveUp(f"{what} failed: {_describe(error)}") from error
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least ``retry_after`` when given, at most ``retry_max_delay``."""
        delay = self.retry_base_delay * (2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.retry_max_delay)

    async def _score_interactive(
        self, client: anthropic.AsyncAnthropic, params: list[dict], indices: list[int]
    ) -> list[Verdict]:
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def one(index: int) -> Verdict:
            async with semaphore:
                while True:
                    body = dict(params[index])
                    extra = {"temperature": body.pop("temperature")} if "temperature" in body else None
                    if self.temperature is None:
                        extra = None
                    try:
                        create = functools.partial(client.messages.create, **body, extra_body=extra)
                        message = await self._with_retries(create, f"request for item {index}")
                    except _GaveUp as failure:
                        if extra and _rejects_temperature(failure.__cause__):
                            if self.temperature is not None:
                                log.warning("%s rejects temperature; sending requests without it", self.model)
                                self.temperature = None
                            continue
                        return Verdict(None, str(failure), False)
                    self._count_message(message)
                    return _verdict_of_message(message)

        if not self._credentials_accepted and indices:
            # The first request goes alone: a refused key (JudgeAuthError) then stops the run after one response,
            # not after max_concurrency of them.
            first = await one(indices[0])
            self._credentials_accepted = True
            return [first, *await asyncio.gather(*(one(i) for i in indices[1:]))]
        return list(await asyncio.gather(*(one(i) for i in indices)))

    async def _score_batch(self, client: anthropic.AsyncAnthropic, params: list[dict]) -> list[Verdict]:
        """Score through the Message Batches API; items the batch did not answer fall back to normal requests."""
        requests = [{"custom_id": f"item-{i}", "params": p} for i, p in enumerate(params)]
        verdicts: dict[int, Verdict] = {}
        try:
            batch = await self._with_retries(
                lambda: client.messages.batches.create(requests=requests), "creating a message batch", batch=True
            )
            deadline = time.monotonic() + self.batch_timeout
            log.info("%s: message batch %s with %d requests", self.judge_id, batch.id, len(requests))
            batch_id = batch.id
            while batch.processing_status != "ended":
                if time.monotonic() > deadline:
                    await self._cancel_batch(client, batch.id)
                    raise _GaveUp(f"message batch {batch.id} did not end within {self.batch_timeout:g} s")
                await asyncio.sleep(self.poll_interval)
                batch = await self._with_retries(
                    lambda: client.messages.batches.retrieve(batch_id), f"polling message batch {batch_id}", batch=True
                )

            async def read_results() -> None:
                async for entry in await client.messages.batches.results(batch.id):
                    match = re.fullmatch(r"item-(\d+)", entry.custom_id)
                    if match is None or int(match.group(1)) >= len(params):
                        continue
                    if entry.result.type == "succeeded":
                        self._count_message(entry.result.message, batch=True)
                        verdicts[int(match.group(1))] = _verdict_of_message(entry.result.message)

            await self._with_retries(read_results, f"reading results of message batch {batch.id}", batch=True)
        except _GaveUp as failure:
            log.warning("%s: %s; falling back to normal requests", self.judge_id, failure)
        rest = [i for i in range(len(params)) if i not in verdicts]
        if rest:
            log.info("%s: %d items not answered by the batch; sending them one by one", self.judge_id, len(rest))
            verdicts.update(zip(rest, await self._score_interactive(client, params, rest)))
        return [verdicts[i] for i in range(len(params))]

    async def _cancel_batch(self, client: anthropic.AsyncAnthropic, batch_id: str) -> None:
        try:
            await self._with_retries(
                lambda: client.messages.batches.cancel(batch_id), f"cancelling message batch {batch_id}", batch=True
            )
        except _GaveUp as failure:
            log.warning("%s: %s", self.judge_id, failure)
