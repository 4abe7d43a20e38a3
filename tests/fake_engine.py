"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire format for one of our models, and
misbehaves on demand: the engine faults of issue 27 (hang, drop, 500, 429, null/empty content, overlong reply, other
model name, malformed body).

It tokenizes each request's messages with the model's own tokenizer (so the probe's prompt token count is the real
one) and answers ``reply`` as text. ``faults`` is a list consumed one per chat request (after ``healthy_first``
healthy chat requests): ``"hang"``, ``"drop"``, ``"500"``, ``"429"``, ``"null"``, ``"empty"``, ``"empty-stop"``
(a real empty reply: stop after one token), ``"overlong"``, ``"other-name"``, ``"malformed"``, ``"bad-count"``;
``always`` repeats one fault for every later request.
``counts["chat"]`` counts chat requests (probe included).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from persona_lens.core.chat import encode_prompt

__all__ = ["FakeEngine"]

HANG_S = 30.0  # a hang lasts this long at most (the server's shutdown cuts it short)


class FakeEngine:
    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str = "served-model",
        reply: str = "Arr, a fine day, matey.",
        faults: list[str] | None = None,
        healthy_first: int = 1,
        always: str | None = None,
    ) -> None:
        self.tokenizer, self.name, self.reply = tokenizer, name, reply
        self.faults = list(faults or [])
        self.healthy_first = healthy_first
        self.always = always
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                engine.counts["models"] += 1
                self._send(200, json.dumps({"object": "list", "data": [{"id": engine.name}]}).encode())

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with engine.lock:
                    engine.counts["chat"] += 1
                    fault = None
                    if engine.counts["chat"] > engine.healthy_first:
                        fault = engine.faults.pop(0) if engine.faults else engine.always
                engine.counts[f"fault:{fault}"] += 1
                prompt_tokens = len(encode_prompt(engine.tokenizer, request["messages"]))
                text, name, completion = engine.reply, engine.name, min(request["max_tokens"], 5)
                if fault == "hang":
                    engine.stop.wait(HANG_S)
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("500", "429"):
                    self._send(int(fault), b'{"error": "scripted"}', {"Retry-After": "0.05"} if fault == "429" else {})
                    return
                if fault == "malformed":
                    self._send(200, b"<html>Bad gateway</html>")
                    return
                if fault == "null":
                    text = None
                elif fault == "empty":
                    text = ""
                elif fault == "empty-stop":  # the model's first token ended its turn: a real, empty reply
                    text, completion = "", 1
                elif fault == "overlong":
                    text, completion = "Arr " * 2000, 2000
                elif fault == "other-name":
                    name = "some-other-model"
                elif fault == "bad-count":
                    prompt_tokens += 3
                self._send(
                    200,
                    json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "model": name,
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop" if fault == "empty-stop" else "length",
                                    "message": {"role": "assistant", "content": text},
                                }
                            ],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion},
                        }
                    ).encode(),
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        time.sleep(0.01)
