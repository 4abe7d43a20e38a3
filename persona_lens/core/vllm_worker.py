"""The persona_lens hooks inside a vLLM worker (``worker_extension_cls``): steer, ablate, cap, record and reads.

This module runs in vLLM's worker process; the driver side is :mod:`persona_lens.core.vllm_engine`. vLLM mixes
:class:`PersonaLensWorker` into its worker class (``LLM(worker_extension_cls=...)``), so its methods run there via
``LLM.collective_rpc``. It imports nothing of persona_lens, only torch and vLLM.

Each request carries its own operations in ``SamplingParams.extra_args["persona_lens"]`` (plain lists, so the
request can cross process boundaries and the OpenAI server): ``{"key": str, "ops": [op, ...]}``. Every op names a
layer in **our** convention (layer ``l`` = HF ``hidden_states[l]``: 0 = the embeddings entering decoder layer 0,
``l >= 1`` = the output of decoder layer ``l - 1``, the sum ``hidden_states + residual`` of vLLM's fused-residual
layers) and positions in our meaning (``all``, ``prompt``, ``response`` = last prompt token and every generated
token, or a window of absolute positions), read from the rotary ``positions`` every decoder layer receives (absolute
token positions, whatever the batching, chunked prefill or cache). Tokens of the flattened batch are mapped to
requests by the attention metadata's ``query_start_loc``, as vllm-lens does (``input_batch.req_ids`` order).

Op kinds: ``add`` (``h + coef v``), ``ablate`` (project ``v``'s direction out), ``cap`` (clamp ``h . u``),
``record`` (``h . u`` per absolute position), ``mean`` (sum and count of ``h`` over a span of absolute positions,
for activation reads), ``norm`` (``|h|`` per absolute position, for residual norms), ``capture`` (``h`` itself per
absolute position, for parity checks). Ops at one layer run in list order, each on the stream its predecessors left.

A failing hook never fails silently (vllm-lens logs a warning and skips the step, so a failure looks like "steering
had no effect"): the exception is kept with the request's key and :meth:`PersonaLensWorker.pl_fetch` hands it to the
driver, which raises. A position read twice (a preempted request recomputed) is an error for ``mean`` reads.
"""

from __future__ import annotations

import io
import json
import pickle
import traceback
from typing import TYPE_CHECKING, Any

import torch

KEY = "persona_lens"


class _Op:
    __slots__ = ("index", "kind", "layer", "vector", "unit", "coef", "lo", "hi", "positions", "span", "seen")

    def __init__(self, index: int, raw: dict[str, Any]) -> None:
        self.index = index
        self.kind = raw["kind"]
        self.layer = int(raw["layer"])
        vector = raw.get("vector")
        self.vector = None if vector is None else torch.tensor(vector, dtype=torch.float32)
        self.unit = None
        if self.vector is not None and self.kind in ("ablate", "cap", "record"):
            self.unit = self.vector / self.vector.norm()
        self.coef = float(raw.get("coef", 0.0))
        self.lo = raw.get("min")
        self.hi = raw.get("max")
        self.positions = raw.get("positions", "all")
        self.span = raw.get("span")
        self.seen: set[int] = set()

    def mask(self, positions: torch.Tensor, prompt_length: int) -> torch.Tensor:
        p = self.positions
        if p == "all":
            return torch.ones_like(positions, dtype=torch.bool)
        if p == "prompt":
            return positions < prompt_length
        if p == "response":
            return positions >= prompt_length - 1
        if isinstance(p, (list, tuple)) and p[0] == "window":
            _, start, stop, relative_to = p
            rel = positions - (prompt_length if relative_to == "prompt_end" else 0)
            m = rel >= int(start)
            if stop is not None:
                m = m & (rel < int(stop))
            return m
        raise ValueError(f"unknown positions {p!r}")


class _Request:
    """A request's parsed operations, by layer, and what its reads gathered."""

    def __init__(self, spec: dict[str, Any], prompt_length: int) -> None:
        self.key = str(spec["key"])
        self.prompt_length = prompt_length
        self.ops = [_Op(i, raw) for i, raw in enumerate(spec.get("ops", []))]
        self.by_layer: dict[int, list[_Op]] = {}
        for op in self.ops:
            self.by_layer.setdefault(op.layer, []).append(op)
        self.results: dict[int, Any] = {}


class PersonaLensWorker:
    """Mixed into vLLM's worker: ``pl_install`` puts hooks on the decoder layers, ``pl_fetch`` returns reads."""

    if TYPE_CHECKING:  # provided by vLLM's worker at runtime
        model_runner: Any

    def pl_install(self) -> dict[str, Any]:
        """Hook every decoder layer of this rank (idempotent); returns what was found."""
        if getattr(self, "_pl_installed", None) is not None:
            return self._pl_installed
        self._pl_requests: dict[str, _Request] = {}
        self._pl_errors: dict[str, str] = {}
        self._pl_step: tuple[Any, list[tuple[_Request, int, int]]] | None = None
        model = self.model_runner.model
        layers = _decoder_layers(model)
        start = int(getattr(getattr(model, "model", model), "start_layer", 0))
        for offset, module in enumerate(layers):
            index = start + offset
            if index == 0:
                module.register_forward_pre_hook(self._pl_make_pre_hook())
            module.register_forward_hook(self._pl_make_hook(index + 1))
        config = self.model_runner.model_config.hf_config
        vllm_config = getattr(self, "vllm_config", None)
        self._pl_installed = {
            "layers": [start + i for i in range(len(layers))],
            "n_layers": int(config.num_hidden_layers),
            "d_model": int(config.hidden_size),
            "layer_class": type(layers[0]).__name__ if len(layers) else None,
            # what the driver must check of a server it did not start: hooks do not fire inside captured graphs,
            # and a cached prefix skips its tokens' hooks
            "enforce_eager": getattr(getattr(vllm_config, "model_config", None), "enforce_eager", None),
            "prefix_caching": getattr(getattr(vllm_config, "cache_config", None), "enable_prefix_caching", None),
        }
        return self._pl_installed

    # -------------------------------------------------------------------------------------------- per step
    def _pl_active(self) -> list[tuple[_Request, int, int]]:
        """``(request, start, end)`` token slices of this forward's requests that carry persona_lens ops."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return []
        ctx = get_forward_context()
        if self._pl_step is not None and self._pl_step[0] is ctx:
            return self._pl_step[1]
        runner = self.model_runner
        active: list[tuple[_Request, int, int]] = []
        num_reqs = runner.input_batch.num_reqs
        if num_reqs:
            meta = ctx.attn_metadata
            if isinstance(meta, list):
                meta = meta[0]
            query_start_loc = None
            if isinstance(meta, dict):
                for value in meta.values():
                    if hasattr(value, "query_start_loc"):
                        query_start_loc = value.query_start_loc
                        break
            elif meta is not None:
                query_start_loc = getattr(meta, "query_start_loc", None)
            bounds = None
            for i, req_id in enumerate(runner.input_batch.req_ids[:num_reqs]):
                state = runner.requests.get(req_id)
                extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
                spec = extra.get(KEY)
                if not spec:
                    continue
                if isinstance(spec, str):  # over the OpenAI server: vllm_xargs carries flat values, so JSON text
                    spec = json.loads(spec)
                if query_start_loc is None:
                    raise RuntimeError(
                        "vLLM's attention metadata has no query_start_loc in this forward, so "
                        "persona_lens cannot tell which tokens belong to which request"
                    )
                if bounds is None:
                    bounds = query_start_loc.tolist()
                request = self._pl_requests.get(req_id)
                if request is None:
                    request = _Request(spec, len(state.prompt_token_ids))
                    self._pl_requests[req_id] = request
                active.append((request, int(bounds[i]), int(bounds[i + 1])))
        self._pl_step = (ctx, active)
        return active

    def _pl_fail(self, request: _Request | None, where: str) -> None:
        message = f"{where}: {traceback.format_exc(limit=8)}"
        if request is None:
            self._pl_errors.setdefault("*", message)
        else:
            self._pl_errors.setdefault(request.key, message)

    def _pl_apply(self, layer: int, positions: torch.Tensor, stream: torch.Tensor) -> torch.Tensor | None:
        """The new stream at ``layer`` (a copy) where some request's ops modify it, else None."""
        out = None
        for request, start, end in self._pl_active():
            ops = request.by_layer.get(layer)
            if not ops:
                continue
            try:
                pos = positions[start:end]
                for op in ops:
                    mask = op.mask(pos, request.prompt_length)
                    if not bool(mask.any()):
                        continue
                    current = (stream if out is None else out)[start:end]
                    if op.kind in ("add", "ablate", "cap"):
                        x = current.float()
                        if op.kind == "add":
                            delta = (op.coef * op.vector.to(x.device)).expand_as(x)
                        else:
                            unit = op.unit.to(x.device)
                            projection = x @ unit
                            if op.kind == "ablate":
                                delta = -projection[:, None] * unit
                            else:
                                clamped = projection.clamp(min=op.lo, max=op.hi)
                                delta = (clamped - projection)[:, None] * unit
                        if out is None:
                            out = stream.clone()
                        delta = delta.to(stream.dtype) * mask[:, None].to(stream.dtype)
                        out[start:end] = current + delta
                    else:
                        self._pl_read(request, op, pos[mask], current[mask])
            except Exception:
                self._pl_fail(request, f"persona_lens hook at layer {layer}")
        return out

    def _pl_read(self, request: _Request, op: _Op, pos: torch.Tensor, x: torch.Tensor) -> None:
        x = x.float()
        if op.kind == "record":
            values = (x @ op.unit.to(x.device)).cpu().tolist()
            request.results.setdefault(op.index, {}).update(zip(pos.tolist(), values))
        elif op.kind == "norm":
            request.results.setdefault(op.index, {}).update(zip(pos.tolist(), x.norm(dim=-1).cpu().tolist()))
        elif op.kind == "capture":
            store = request.results.setdefault(op.index, {})
            for p, row in zip(pos.tolist(), x.cpu()):
                store[p] = row
        elif op.kind == "mean":
            lo, hi = op.span
            keep = (pos >= lo) & (pos < hi)
            chosen = pos[keep].tolist()
            if not chosen:
                return
            if op.seen.intersection(chosen):
                raise RuntimeError(
                    f"positions {sorted(op.seen.intersection(chosen))[:5]} were computed twice "
                    "(vLLM recomputed a preempted request); lower max_num_seqs or raise "
                    "gpu_memory_utilization / the KV cache so requests are not preempted"
                )
            op.seen.update(chosen)
            total = x[keep].sum(0).cpu()
            old = request.results.get(op.index)
            request.results[op.index] = total if old is None else old + total
        else:
            raise ValueError(f"unknown persona_lens op kind {op.kind!r}")

    def _pl_make_pre_hook(self) -> Any:
        def hook(module: Any, args: tuple) -> tuple | None:
            try:
                positions, hidden = args[0], args[1]
                new = self._pl_apply(0, positions, hidden)
            except Exception:
                self._pl_fail(None, "persona_lens hook at layer 0")
                return None
            if new is None:
                return None
            return (positions, new, *args[2:])

        return hook

    def _pl_make_hook(self, layer: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> Any:
            try:
                positions = args[0]
                if isinstance(output, tuple):
                    hidden, residual = output[0], output[1]
                    stream = hidden if residual is None else hidden + residual
                    new = self._pl_apply(layer, positions, stream)
                    if new is None:
                        return None
                    # the next layer's fused add (or the final norm) adds `residual` back: hand it the new stream
                    # whole and a zero residual, so the stream it sees is exactly ours
                    zero = None if residual is None else torch.zeros_like(residual)
                    return (new, zero, *output[2:])
                new = self._pl_apply(layer, positions, output)
                return new
            except Exception:
                self._pl_fail(None, f"persona_lens hook at layer {layer}")
                return None

        return hook

    # ------------------------------------------------------------------------------------------- the driver
    def pl_fetch(self, keys: list[str]) -> bytes:
        """Pickled ``{"results": {key: {op index: value}}, "errors": {key or "*": traceback}}`` for ``keys``
        (requests the driver saw finish); forgets them."""
        wanted = set(keys)
        results = {}
        for req_id, request in list(self._pl_requests.items()):
            if request.key in wanted:
                results[request.key] = self._pl_requests.pop(req_id).results
        errors = {key: self._pl_errors.pop(key) for key in list(self._pl_errors) if key in wanted or key == "*"}
        buffer = io.BytesIO()
        pickle.dump({"results": results, "errors": errors}, buffer)
        return buffer.getvalue()

    def pl_fetch_json(self, keys: str) -> dict[str, Any]:
        """:meth:`pl_fetch` for a driver over HTTP (vLLM's dev-mode ``/collective_rpc`` passes string arguments and
        JSON results): ``keys`` a JSON list; tensors become lists, op indices and positions strings."""
        fetched = pickle.loads(self.pl_fetch(json.loads(keys)))

        def plain(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.tolist()
            if isinstance(value, dict):
                return {str(k): plain(v) for k, v in value.items()}
            return value

        return {"results": plain(fetched["results"]), "errors": fetched["errors"]}

    def pl_reset(self) -> None:
        """Forget every request's state and error (after a failed batch)."""
        self._pl_requests.clear()
        self._pl_errors.clear()


def _decoder_layers(model: Any) -> list[Any]:
    """The decoder layers this rank holds (``model.model.layers`` of vLLM's decoder-only models), skipping the
    pipeline-parallel placeholders of other ranks."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise RuntimeError(
            f"persona_lens cannot find the decoder layers of {type(model).__name__} "
            "(expected model.model.layers, as in vLLM's Llama, Qwen, Mistral and Gemma models)"
        )
    start = int(getattr(inner, "start_layer", 0))
    end = int(getattr(inner, "end_layer", len(layers)))
    return [layers[i] for i in range(start, end)]
