"""A real HTTP server on 127.0.0.1 that speaks Anthropic's wire format, for testing every Claude code path offline.

It implements ``POST /v1/messages`` and the Message Batches API (``POST /v1/messages/batches``,
``GET /v1/messages/batches/{id}``, ``GET .../{id}/results`` as JSONL, ``POST .../{id}/cancel``). What the "model"
says is decided by a reply function ``reply(request_json) -> str | list | dict | Fault``:

* ``str``: the text of one text block;
* ``list``: the content blocks themselves (e.g. a ``tool_use`` block);
* ``dict``: fields of the message to override (``{"content": [...], "stop_reason": "tool_use"}``);
* :class:`Fault`: this request fails (status code, slow reply, malformed body, dropped connection).

Faults can also be queued with :meth:`FakeAnthropic.fail_next`; queued faults are used first, one per request.
Every request is counted per endpoint (``server.counts["messages"]``) and recorded (``server.requests``).

Usage::

    with FakeAnthropic(lambda request: "42") as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="test")

or the pytest fixture :func:`fake_anthropic` (a running server answering "50"; change it with ``set_reply``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["FakeAnthropic", "Fault", "fake_anthropic", "request_text", "count_tokens", "MAX_SLEEP_S"]

MAX_SLEEP_S = 10.0
"""No fault ever sleeps longer than this (and the server's shutdown cuts every sleep short)."""

Reply = Callable[[dict], Any]


@dataclass(frozen=True)
class Fault:
    """One scripted failure of a request."""

    kind: str  # "status" | "slow" | "malformed" | "disconnect"
    status: int = 500
    error_type: str = "api_error"
    message: str = "scripted fault"
    retry_after: float | None = None
    delay: float = 0.0
    then: Any = None  # for "slow": what to answer after the delay (None: the reply function's answer)

    @staticmethod
    def rate_limited(retry_after: float | None = 0.01) -> Fault:
        return Fault("status", 429, "rate_limit_error", "rate limited", retry_after=retry_after)

    @staticmethod
    def server_error() -> Fault:
        return Fault("status", 500, "api_error", "internal server error")

    @staticmethod
    def overloaded() -> Fault:
        return Fault("status", 529, "overloaded_error", "Overloaded")

    @staticmethod
    def bad_request(message: str = "invalid request") -> Fault:
        return Fault("status", 400, "invalid_request_error", message)

    @staticmethod
    def slow(delay: float, then: Any = None) -> Fault:
        return Fault("slow", delay=delay, then=then)

    @staticmethod
    def malformed() -> Fault:
        return Fault("malformed")

    @staticmethod
    def disconnect() -> Fault:
        return Fault("disconnect")


def request_text(request: dict) -> str:
    """All the text a Messages request carries (system prompt and every message), joined by newlines."""
    parts: list[str] = []

    def collect(content: Any) -> None:
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    if isinstance(block.get("text"), str):
                        parts.append(block["text"])
                    if "content" in block:
                        collect(block["content"])
                    if block.get("type") == "tool_use":
                        parts.append(json.dumps(block.get("input")))

    collect(request.get("system", ""))
    for message in request.get("messages", []):
        collect(message.get("content"))
    return "\n".join(parts)


def count_tokens(text: str) -> int:
    """A stand-in token count: one token per 4 characters, at least 1."""
    return max(1, len(text) // 4)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    requests: list[dict]
    created_at: datetime
    polls_left: int
    results: list[dict] = field(default_factory=list)
    ended_at: datetime | None = None


class FakeAnthropic:
    """The test server; a context manager (``with FakeAnthropic(reply) as server``) or ``start()``/``stop()``.

    ``reply`` is a function of the request JSON, a constant string, or a list of answers used in turn (the last
    one repeats). A batch reports ``ended`` from its ``batch_polls``-th ``GET /v1/messages/batches/{id}`` on
    (0: it ends as soon as it is created).
    ``api_key``: when set, requests without that ``x-api-key`` get a 401. ``reject_temperature``: answer requests
    that set ``temperature`` with the 400 that newer models give.
    """

    def __init__(
        self,
        reply: Reply | str | list | None = None,
        *,
        model: str | None = None,
        batch_polls: int = 1,
        api_key: str | None = None,
        reject_temperature: bool = False,
    ) -> None:
        self._reply = _as_reply(reply if reply is not None else "50")
        self.model = model
        self.batch_polls = batch_polls
        self.api_key = api_key
        self.reject_temperature = reject_temperature
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str, Any]] = []  # (endpoint, path, json body)
        self._faults: deque[Fault] = deque()
        self._batches: dict[str, _Batch] = {}
        self._cached_prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Anthropic server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ scripting
    def set_reply(self, reply: Reply | str | list) -> None:
        self._reply = _as_reply(reply)

    def fail_next(self, *faults: Fault | Iterable[Fault]) -> None:
        """Queue faults: each of the next requests to ``/v1/messages`` takes one, in order."""
        with self._lock:
            for fault in faults:
                self._faults.extend([fault] if isinstance(fault, Fault) else list(fault))

    def bodies(self, endpoint: str = "messages") -> list[Any]:
        """The JSON bodies received on one endpoint, in arrival order."""
        return [body for name, _, body in self.requests if name == endpoint]

    # ---------------------------------------------------------------------------------------- the "model"
    def _validate(self, body: Any) -> None:
        _validate_messages_request(body)
        if self.reject_temperature and "temperature" in body:
            raise _ApiError(400, "invalid_request_error", "`temperature` is deprecated for this model.")

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _answer(self, request: dict) -> Any:
        return self._reply(request)

    def _message(self, request: dict, answer: Any) -> dict:
        """A full Messages API response for ``request`` whose content is ``answer``."""
        fields: dict[str, Any] = {}
        if isinstance(answer, str):
            content = [{"type": "text", "text": answer}]
        elif isinstance(answer, list):
            content = answer
        elif isinstance(answer, dict):
            fields = dict(answer)
            content = fields.pop("content", [])
        else:
            raise TypeError(f"reply function returned {type(answer).__name__}; expected str, list, dict or Fault")
        out_text = "".join(b.get("text", "") or json.dumps(b.get("input", "")) for b in content)
        output_tokens = count_tokens(out_text)
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
        max_tokens = int(request.get("max_tokens", 1 << 30))
        if output_tokens > max_tokens:
            output_tokens = max_tokens
            stop_reason = "max_tokens"
        cache_write, cache_read = self._cache_tokens(request)
        total = count_tokens(request_text(request))
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.model or request.get("model", "claude-test"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": max(1, total - cache_write - cache_read),
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache_write,
                "cache_read_input_tokens": cache_read,
            },
        }
        message.update(fields)
        return message

    def _cache_tokens(self, request: dict) -> tuple[int, int]:
        """(cache write, cache read) tokens: system blocks marked ``cache_control`` are cached after first use."""
        system = request.get("system")
        if not isinstance(system, list):
            return 0, 0
        prefix = ""
        for block in system:
            prefix += block.get("text", "")
            if block.get("cache_control"):
                with self._lock:
                    seen = prefix in self._cached_prefixes
                    self._cached_prefixes.add(prefix)
                tokens = count_tokens(prefix)
                return (0, tokens) if seen else (tokens, 0)
        return 0, 0

    # ------------------------------------------------------------------------------------------- batches
    def _create_batch(self, body: dict) -> dict:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise _ApiError(400, "invalid_request_error", "requests: must be a non-empty list")
        ids = [r.get("custom_id") for r in requests]
        if len(set(ids)) != len(ids) or not all(
            isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids
        ):
            raise _ApiError(
                400, "invalid_request_error", "custom_id values must be unique and match ^[a-zA-Z0-9_-]{1,64}$"
            )
        for r in requests:
            self._validate(r.get("params"))
        batch = _Batch(
            id=f"msgbatch_{uuid.uuid4().hex[:24]}", requests=requests, created_at=_now(), polls_left=self.batch_polls
        )
        with self._lock:
            self._batches[batch.id] = batch
        if batch.polls_left <= 0:
            self._finish_batch(batch)
        return self._batch_json(batch)

    def _finish_batch(self, batch: _Batch) -> None:
        results = []
        for r in batch.requests:
            answer = self._answer(r["params"])
            if isinstance(answer, Fault):
                error_type = answer.error_type if answer.kind == "status" else "api_error"
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": error_type, "message": answer.message}},
                }
            else:
                result = {"type": "succeeded", "message": self._message(r["params"], answer)}
            results.append({"custom_id": r["custom_id"], "result": result})
        batch.results = results[::-1]  # the API does not keep request order; make sure clients do not rely on it
        batch.ended_at = _now()

    def _retrieve_batch(self, batch_id: str) -> dict:
        batch = self._get_batch(batch_id)
        with self._lock:
            finish = batch.ended_at is None and batch.polls_left <= 1
            batch.polls_left -= 1
        if finish:
            self._finish_batch(batch)
        return self._batch_json(batch)

    def _cancel_batch(self, batch_id: str) -> dict:
        batch = self._get_batch(batch_id)
        with self._lock:
            if batch.ended_at is None:
                batch.results = [{"custom_id": r["custom_id"], "result": {"type": "canceled"}} for r in batch.requests]
                batch.ended_at = _now()
        return self._batch_json(batch)

    def _get_batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise _ApiError(404, "not_found_error", f"batch {batch_id} not found")
        return batch

    def _batch_json(self, batch: _Batch) -> dict:
        ended = batch.ended_at is not None
        kinds = Counter(r["result"]["type"] for r in batch.results)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": kinds["succeeded"],
                "errored": kinds["errored"],
                "canceled": kinds["canceled"],
                "expired": kinds["expired"],
            },
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + timedelta(hours=24)),
            "ended_at": _iso(batch.ended_at) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


def _as_reply(reply: Reply | str | list) -> Reply:
    if callable(reply):
        return reply
    if isinstance(reply, list):
        answers = deque(reply)
        lock = threading.Lock()

        def scripted(request: dict) -> Any:
            with lock:
                return answers.popleft() if len(answers) > 1 else answers[0]

        return scripted
    return lambda request: reply


class _ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.retry_after = status, error_type, message, retry_after


def _validate_messages_request(body: Any) -> None:
    """Reject what the real API rejects, so a client that sends nonsense fails here too."""
    if not isinstance(body, dict):
        raise _ApiError(400, "invalid_request_error", "body must be a JSON object")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise _ApiError(400, "invalid_request_error", f"{key}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise _ApiError(400, "invalid_request_error", "max_tokens: must be a positive integer")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages or messages[0].get("role") != "user":
        raise _ApiError(400, "invalid_request_error", "messages: must start with a user turn")
    for before, after in zip(messages, messages[1:]):
        if before.get("role") == after.get("role"):
            raise _ApiError(400, "invalid_request_error", "messages: roles must alternate between user and assistant")
    temperature = body.get("temperature", 1.0)
    if not 0.0 <= float(temperature) <= 1.0:
        raise _ApiError(400, "invalid_request_error", "temperature: must be between 0 and 1")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # ---------------------------------------------------------------------------------------- plumbing
    def _send(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to do

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _send_error(self, error: _ApiError) -> None:
        headers = {"x-should-retry": "true"} if error.status in (429, 500, 529) else {}
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        self._send(
            error.status,
            json.dumps({"type": "error", "error": {"type": error.error_type, "message": error.message}}).encode(),
            headers=headers,
        )

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise _ApiError(400, "invalid_request_error", "body is not valid JSON") from None

    def _apply_fault(self, fault: Fault) -> bool:
        """Carry out ``fault``; True when the request is answered (or dropped) and nothing more must be sent."""
        if fault.kind == "status":
            self._send_error(_ApiError(fault.status, fault.error_type, fault.message, fault.retry_after))
            return True
        if fault.kind == "slow":
            self.fake._stopping.wait(min(fault.delay, MAX_SLEEP_S))
            return False
        if fault.kind == "malformed":
            self._send(200, b'{"id": "msg_broken", "type": "message", "content": [{"type": "te')
            return True
        if fault.kind == "disconnect":
            self.close_connection = True
            self.connection.close()
            return True
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _check_key(self) -> None:
        if self.fake.api_key is not None and self.headers.get("x-api-key") != self.fake.api_key:
            raise _ApiError(401, "authentication_error", "invalid x-api-key")
        if not self.headers.get("anthropic-version"):
            raise _ApiError(400, "invalid_request_error", "anthropic-version header is required")

    # ------------------------------------------------------------------------------------------ routing
    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        fake = self.fake
        try:
            body = self._read_json()
            cancel = re.fullmatch(r"/v1/messages/batches/([A-Za-z0-9_]+)/cancel", path)
            if path == "/v1/messages":
                endpoint = "messages"
            elif path == "/v1/messages/batches":
                endpoint = "batches.create"
            elif cancel:
                endpoint = "batches.cancel"
            else:
                raise _ApiError(404, "not_found_error", f"no route POST {path}")
            with fake._lock:
                fake.counts[endpoint] += 1
                fake.requests.append((endpoint, path, body))
            self._check_key()
            if endpoint == "batches.create":
                self._send_json(200, fake._create_batch(body))
                return
            if cancel:
                self._send_json(200, fake._cancel_batch(cancel.group(1)))
                return
            fake._validate(body)
            fault = fake._next_fault()
            answer: Any = None
            if fault is None:
                answer = fake._answer(body)
                if isinstance(answer, Fault):
                    fault, answer = answer, None
            if fault is not None:
                if self._apply_fault(fault):
                    return
                answer = fault.then if fault.then is not None else fake._answer(body)
                if isinstance(answer, Fault):
                    if self._apply_fault(answer):
                        return
                    answer = fake._answer(body)
            self._send_json(200, fake._message(body, answer))
        except _ApiError as error:
            self._send_error(error)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        fake = self.fake
        try:
            match = re.fullmatch(r"/v1/messages/batches/([A-Za-z0-9_]+)(/results)?", path)
            if not match:
                raise _ApiError(404, "not_found_error", f"no route GET {path}")
            endpoint = "batches.results" if match.group(2) else "batches.retrieve"
            with fake._lock:
                fake.counts[endpoint] += 1
                fake.requests.append((endpoint, path, None))
            self._check_key()
            if endpoint == "batches.retrieve":
                self._send_json(200, fake._retrieve_batch(match.group(1)))
                return
            batch = fake._get_batch(match.group(1))
            if batch.ended_at is None:
                raise _ApiError(400, "invalid_request_error", "batch has not ended yet")
            lines = "".join(json.dumps(r) + "\n" for r in batch.results)
            self._send(200, lines.encode(), content_type="application/binary")
        except _ApiError as error:
            self._send_error(error)


@pytest.fixture
def fake_anthropic():
    """A running :class:`FakeAnthropic` (import this fixture into a conftest or test module to use it)."""
    with FakeAnthropic() as server:
        yield server


def _selftest() -> None:  # pragma: no cover - a quick manual check: python tests/fake_anthropic.py
    import anthropic

    with FakeAnthropic(lambda request: "42") as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0)
        start = time.perf_counter()
        reply = client.messages.create(model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        print(reply, time.perf_counter() - start)


if __name__ == "__main__":  # pragma: no cover
    _selftest()
