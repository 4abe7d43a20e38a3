"""Where persona vectors are *applied*: residual-stream hooks (add, ablate, cap, record).

Every operation is a plain TransformerLens hook function, ``fn(resid, hook) -> resid``, installed on the standard
hook names of our layer convention (:mod:`persona_lens.core.layers`): layer ``l >= 1`` is
``blocks.{l-1}.hook_resid_post``, layer 0 is ``blocks.0.hook_resid_pre``. They therefore run on a
:class:`~persona_lens.core.hooked_model.HookedLM`, a ``TransformerBridge`` or a ``HookedTransformer`` alike, and compose
with the user's own hooks (they run in the order they were added).

Each installer (:func:`steer`, :func:`ablate`, :func:`cap`, :func:`record`) takes any model with TransformerLens
hook points (:class:`~persona_lens.core.protocols.TransformerLensModel`) and returns a :class:`HookHandle` that is
both a removable handle and a context manager; :func:`record`'s :class:`RecordingHandle` also hands out what it
read::

    with persona_lens.steer(model, vector, layer=20, coef=0.4):   # |added| = 0.4 x the residual's median norm
        ...                                   # hooks removed on exit, also on exceptions
    handle = persona_lens.steer(model, vector, layer=20, coef=2.0, raw=True)   # h_20 + 2.0 v_20 (paper units)
    handle.remove()
    with persona_lens.record(model, vector, layer=20) as recording:
        ...
    recording.projections()                   # [conversation, absolute position]

Positions (the same meaning with and without a KV cache, since they count absolute token positions):

* ``"all"``       every position of every forward;
* ``"prompt"``    prompt tokens only (the prefill);
* ``"response"``  the last prompt token and every generated token (the paper's "response" steering: the last
  position of each cached forward); the default of :func:`steer`, :func:`ablate` and :func:`cap`;
* a :class:`Window` of absolute positions, counted from the first real token or from the end of the prompt.

Absolute positions need to know left padding, prompt lengths and how many tokens the KV cache already holds. Our
generation and activation code publish that as a :class:`TokenLayout` (a context variable). In any other runner
(a plain forward, ``run_with_cache``, HF ``generate``, ``TransformerBridge.generate``, ``HookedTransformer.generate``)
the installers read it from the forward call (:mod:`persona_lens.core.runners`): a forward with an empty cache is a
prompt (``"response"`` is then its last position, as in the authors' code), and inside a ``generate`` call the
positions mean what they mean in our runners, with and without the KV cache. Where a hook cannot know its absolute
positions it raises :class:`~persona_lens.core.runners.UnreadablePositions`, naming the fix, instead of guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from persona_lens.core.layers import check_layer, hook_name
from persona_lens.core.protocols import TransformerLensModel
from persona_lens.core.runners import EXPLICIT_LAYOUT, UnreadablePositions, attach_reader, detach_reader, read_forward
from persona_lens.core.validate import check_all_finite, finite, finite_values, layer_index
from persona_lens.core.vectors import VectorLike, check_vector, unit_rows

__all__ = [
    "Layers",
    "Positions",
    "Window",
    "TokenLayout",
    "token_layout",
    "current_layout",
    "position_mask",
    "MAX_ADDED_NORM",
    "check_steering_size",
    "AddVector",
    "AblateDirection",
    "CapProjection",
    "RecordProjection",
    "HookHandle",
    "RecordingHandle",
    "install_hooks",
    "steer",
    "ablate",
    "cap",
    "record",
]


@dataclass(frozen=True)
class Window:
    """Absolute positions ``start <= p < stop`` (``stop=None``: to the end).

    ``relative_to="start"`` counts from the first real token of the row; ``"prompt_end"`` counts from the first
    response token, so ``Window(-1, 0, "prompt_end")`` is the last prompt token and ``Window(0, 8, "prompt_end")``
    the first eight generated tokens.
    """

    start: int
    stop: int | None = None
    relative_to: Literal["start", "prompt_end"] = "start"


Positions = Union[Literal["all", "prompt", "response"], Window]  # noqa: UP007 (a runtime alias)


@dataclass
class TokenLayout:
    """How the tokens of the current forward sit in their rows: set by our runners, read by the hooks."""

    pad_lengths: Int[Tensor, " batch"]
    prompt_lengths: Int[Tensor, " batch"] | None
    """Real prompt tokens per row; None where the runner did not tell (a mode that needs it then raises)."""
    past_length: int | Int[Tensor, " 1"] = 0
    """Tokens already in the KV cache. Compiled runners give it as a tensor (a Python int that changed every
    step would recompile the graph every step)."""
    row_index: Int[Tensor, " batch"] | None = None
    """Which of the caller's conversations each row is (runners sort by length): per-conversation coefficients
    are looked up through it."""
    _masks: dict[tuple[Any, ...], Tensor] = field(default_factory=dict, repr=False, compare=False)

    def begin_forward(self, past_length: int | Int[Tensor, " 1"] = 0) -> None:
        """Describe the next forward over these rows: ``past_length`` tokens already sit in the KV cache.

        The position masks cached for earlier forwards are dropped. Compiled runners pass a tensor (no per-step
        Python value for the graph to guard on); masks are then computed in the graph and never cached.
        """
        self.past_length = past_length
        self._masks.clear()

    def absolute_positions(self, seq_len: int) -> Int[Tensor, "batch pos"]:
        offsets = torch.arange(seq_len, device=self.pad_lengths.device) + self.past_length
        return offsets[None, :] - self.pad_lengths[:, None]


_LAYOUT = EXPLICIT_LAYOUT  # ContextVar[TokenLayout | None], owned by core.runners (which reads nothing under it)
# torch.compile cannot trace ContextVar.get; compiled code reads this mirror of the innermost layout instead.
_TRACEABLE_LAYOUT: list[TokenLayout | None] = [None]


@contextmanager
def token_layout(layout: TokenLayout | None) -> Iterator[TokenLayout | None]:
    """Publish ``layout`` to every persona_lens hook for the duration of the block."""
    token = _LAYOUT.set(layout)
    outer = _TRACEABLE_LAYOUT[0]
    _TRACEABLE_LAYOUT[0] = layout
    try:
        yield layout
    finally:
        _LAYOUT.reset(token)
        _TRACEABLE_LAYOUT[0] = outer


def current_layout() -> TokenLayout | None:
    """The layout published by the innermost :func:`token_layout`, or None."""
    if torch.compiler.is_compiling():
        return _TRACEABLE_LAYOUT[0]
    return _LAYOUT.get()


def position_mask(positions: Positions, batch: int, seq_len: int, device: torch.device) -> Bool[Tensor, "batch pos"]:
    """Which positions of the current forward ``positions`` names (real tokens only).

    The layout is the published one, else the one read from the running forward, else (a direct call outside any
    forward) one unpadded prompt of ``seq_len`` tokens.
    """
    layout = current_layout()
    if layout is None:
        layout = _read_layout(batch, seq_len, device)
    if layout is None:
        layout = TokenLayout(
            pad_lengths=torch.zeros(batch, dtype=torch.long, device=device),
            prompt_lengths=torch.full((batch,), seq_len, dtype=torch.long, device=device),
        )
    return _mask_for(layout, positions, batch, seq_len, device)


def _read_layout(batch: int, seq_len: int, device: torch.device) -> TokenLayout | None:
    """The layout of the forward a runner reader is reading now (see :mod:`persona_lens.core.runners`), or None."""
    if torch.compiler.is_compiling():
        return None
    read = read_forward()
    if read is None:
        return None
    pads, prompt, past = read.resolve(batch, seq_len, device)
    if read.layout is None or read.layout.pad_lengths.shape[0] != batch:
        read.layout = TokenLayout(pads, prompt, past_length=past)
    return read.layout


def _hook_layout(positions: Positions, batch: int, seq_len: int, device: torch.device) -> TokenLayout:
    """The layout a hook acts on: published or read; a hook never guesses its absolute positions."""
    layout = current_layout()
    if layout is None:
        layout = _read_layout(batch, seq_len, device)
    if layout is None:
        raise UnreadablePositions(
            f"a persona_lens hook with positions={positions!r} ran in a forward whose absolute token positions it "
            "cannot know: install hooks with persona_lens.steer / ablate / cap / record / install_hooks on a "
            "HookedLM, TransformerBridge or HookedTransformer (whose forwards persona_lens reads) and call the "
            "model itself (not one of its blocks), or run the forward inside "
            "persona_lens.core.hooks.token_layout(TokenLayout(pad_lengths, prompt_lengths, past_length))"
            + ("" if positions == "all" else "; steering, ablation and capping also work with positions='all'")
        )
    return layout


def _mask_for(
    layout: TokenLayout, positions: Positions, batch: int, seq_len: int, device: torch.device
) -> Bool[Tensor, "batch pos"]:
    if layout.pad_lengths.shape[0] != batch:
        raise ValueError(
            f"the token layout describes {layout.pad_lengths.shape[0]} rows but this forward has {batch}; "
            "run other forwards outside persona_lens.core.hooks.token_layout(...)"
        )
    # Masks are shared by every hooked layer of one eager forward; traced code computes them in the graph.
    cacheable = isinstance(layout.past_length, int) and not torch.compiler.is_compiling()
    key = (positions, seq_len, layout.past_length)
    if cacheable and key in layout._masks:
        return layout._masks[key]
    absolute = layout.absolute_positions(seq_len).to(device)
    real = absolute >= 0
    if positions == "all":
        mask = real
    elif isinstance(positions, Window) and positions.relative_to == "start":
        mask = real & (absolute >= positions.start)
        if positions.stop is not None:
            mask = mask & (absolute < positions.stop)
    else:
        if layout.prompt_lengths is None:
            read = None if torch.compiler.is_compiling() else read_forward()
            why = read.unknown_prompt if read is not None and read.unknown_prompt else "the runner did not tell"
            raise UnreadablePositions(
                f"positions={positions!r} need to know where the prompt ends, and this forward cannot tell: {why}. "
                "Run the prompt through the model with the hooks installed (then persona_lens follows its cache), "
                "use positions='all' or a Window counted from the start, or run inside "
                "persona_lens.core.hooks.token_layout(TokenLayout(pad_lengths, prompt_lengths, past_length))"
            )
        prompt_lengths = layout.prompt_lengths.to(device)[:, None]
        if positions == "prompt":
            mask = real & (absolute < prompt_lengths)
        elif positions == "response":
            mask = absolute >= prompt_lengths - 1
        elif isinstance(positions, Window):
            relative = absolute - prompt_lengths
            mask = real & (relative >= positions.start)
            if positions.stop is not None:
                mask = mask & (relative < positions.stop)
        else:
            raise ValueError(f"unknown positions {positions!r}; use 'all', 'prompt', 'response' or a Window")
    if cacheable:
        layout._masks[key] = mask
    return mask


def _check_positions(positions: Positions) -> Positions:
    if positions in ("all", "prompt", "response") or isinstance(positions, Window):
        return positions
    raise ValueError(f"unknown positions {positions!r}; use 'all', 'prompt', 'response' or a Window")


class _ResidualHook:
    """Shared plumbing: a direction at one layer, restricted to some positions."""

    def __init__(self, vector: Float[Tensor, " d_model"], positions: Positions) -> None:
        if vector.dim() != 1:
            raise ValueError(f"a hook takes one direction [d_model], got shape {tuple(vector.shape)}")
        self.vector = vector.detach().float()
        self.positions = _check_positions(positions)
        self._cast: dict[tuple[Any, ...], Tensor] = {}

    def _vector_like(self, resid: Tensor) -> Tensor:
        key = (resid.device, resid.dtype)
        if key not in self._cast:
            if resid.shape[-1] != self.vector.shape[0]:
                raise ValueError(
                    f"vector has d_model={self.vector.shape[0]} but the residual stream has {resid.shape[-1]}"
                )
            self._cast[key] = self.vector.to(device=resid.device, dtype=resid.dtype)
        return self._cast[key]

    def _mask(self, resid: Tensor, modifies: bool = True) -> Bool[Tensor, "batch pos"] | None:
        """None when every position is meant (pad positions never influence real tokens, so modifiers skip
        the mask there; recorders still need it)."""
        if modifies and self.positions == "all":
            return None
        batch, seq_len = resid.shape[0], resid.shape[1]
        return _mask_for(
            _hook_layout(self.positions, batch, seq_len, resid.device), self.positions, batch, seq_len, resid.device
        )

    @property
    def needs_layout(self) -> bool:
        """Whether this hook needs absolute positions (everything but a modifier acting on every position)."""
        return self.positions != "all"

    @staticmethod
    def _apply(resid: Tensor, delta: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return resid + delta
        return resid + delta * mask[..., None].to(delta.dtype)


#: The largest norm an added vector may have: beyond it the residual's squared norm overflows float32 in the model's
#: normalisation (RMSNorm / LayerNorm, computed in float32), the normalised state becomes 0 and every next-token
#: distribution uniform (tiny-llama at a raw coefficient of 1e20: the logits' standard deviation is exactly 0).
MAX_ADDED_NORM = float(torch.finfo(torch.float32).max) ** 0.5


def check_steering_size(coef: float | Tensor, vector: Float[Tensor, " d_model"]) -> None:
    """Refuse a coefficient whose added vector ``coef * v`` would overflow the residual stream's normalisation
    (:data:`MAX_ADDED_NORM`): replies generated so would be uniform noise, not the model's steered behaviour. The
    steering sweep checks every cell with it before generating; :func:`steer` itself does not (finetuning relies on
    such a coefficient reaching its non-finite-loss guard)."""
    largest = float(coef.abs().max()) if isinstance(coef, Tensor) and coef.numel() else abs(float(coef))
    size = largest * float(vector.detach().float().norm())
    if size >= MAX_ADDED_NORM:
        from persona_lens.core.validate import BadValue

        raise BadValue(
            f"a raw coefficient of {largest:g} adds a vector of norm {size:.3g}, beyond {MAX_ADDED_NORM:.3g}, where "
            "the residual's squares overflow float32 in the model's normalisation and every next token is drawn "
            "uniformly; give a smaller coefficient"
        )


class AddVector(_ResidualHook):
    """``h <- h + coef * v``; ``coef`` is a number or one value per conversation (a coefficient sweep in one batch).

    Per-conversation coefficients follow the conversation through our runners' sorting and batching (via
    ``TokenLayout.row_index``); in a plain forward they follow the batch rows.
    """

    def __init__(
        self,
        vector: Float[Tensor, " d_model"],
        coef: float | Float[Tensor, " batch"] = 1.0,
        positions: Positions = "all",
    ) -> None:
        super().__init__(vector, positions)
        self.coef = coef.detach().float() if isinstance(coef, Tensor) else float(coef)

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        vector = self._vector_like(resid)
        if isinstance(self.coef, Tensor):
            coef = self.coef
            layout = current_layout()
            if layout is not None and layout.row_index is not None and torch.compiler.is_compiling():
                # Checked by the eager prefill that precedes compiled decoding; an index is traceable, .cpu() not.
                coef = coef.to(resid.device)[layout.row_index.to(resid.device)]
            elif layout is not None and layout.row_index is not None:
                if int(layout.row_index.max()) >= coef.shape[0]:
                    raise ValueError(
                        f"{coef.shape[0]} per-conversation coefficients, but conversation "
                        f"{int(layout.row_index.max())} is being run"
                    )
                coef = coef[layout.row_index.cpu()]
            elif coef.shape != (resid.shape[0],):
                raise ValueError(
                    f"per-row coefficients have shape {tuple(coef.shape)} but the batch has {resid.shape[0]} rows"
                )
            delta = coef.to(resid.device, resid.dtype)[:, None, None] * vector
        else:
            delta = self.coef * vector
        return self._apply(resid, delta, self._mask(resid))


class AblateDirection(_ResidualHook):
    """Project the unit direction out of the residual stream: ``h <- h - (h . u) u``."""

    def __init__(self, vector: Float[Tensor, " d_model"], positions: Positions = "all") -> None:
        super().__init__(unit_rows(vector.detach().float(), names="the vector"), positions)

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        unit = self._vector_like(resid)
        projection = resid @ unit
        return self._apply(resid, -projection[..., None] * unit, self._mask(resid))


class CapProjection(_ResidualHook):
    """Clamp the projection onto the unit direction into ``[min_value, max_value]`` (activation capping)."""

    def __init__(
        self,
        vector: Float[Tensor, " d_model"],
        min_value: float | None = None,
        max_value: float | None = None,
        positions: Positions = "all",
    ) -> None:
        if min_value is None and max_value is None:
            raise ValueError("cap needs min_value, max_value or both")
        if min_value is not None and max_value is not None and min_value > max_value:
            raise ValueError(f"cap range is empty: min_value {min_value} > max_value {max_value}")
        super().__init__(unit_rows(vector.detach().float(), names="the vector"), positions)
        self.min_value, self.max_value = min_value, max_value

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        unit = self._vector_like(resid)
        projection = resid @ unit
        clamped = projection.clamp(min=self.min_value, max=self.max_value)
        return self._apply(resid, (clamped - projection)[..., None] * unit, self._mask(resid))


class RecordProjection(_ResidualHook):
    """Record ``h . u`` at the named positions of every forward, keyed by conversation and absolute position.

    Inside our runners rows are the caller's conversations (``TokenLayout.row_index``), whatever the batching.
    """

    needs_layout = True  # recordings are keyed by absolute position, whatever the positions

    def __init__(self, vector: Float[Tensor, " d_model"], positions: Positions = "all") -> None:
        super().__init__(unit_rows(vector.detach().float(), names="the vector"), positions)
        self.steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def __call__(self, resid: Float[Tensor, "batch pos d_model"], hook: Any = None) -> None:
        unit = self._vector_like(resid)
        projection = (resid @ unit).float()
        mask = self._mask(resid, modifies=False)
        assert mask is not None  # recorders always get a mask (modifies=False)
        batch, seq_len = resid.shape[0], resid.shape[1]
        layout = _hook_layout(self.positions, batch, seq_len, resid.device)
        absolute = layout.absolute_positions(seq_len)
        rows = torch.arange(batch) if layout.row_index is None else layout.row_index
        self.steps.append((rows.cpu(), absolute.cpu(), projection.detach().cpu(), mask.cpu()))
        return None

    def clear(self) -> None:
        self.steps.clear()

    def projections(self) -> Float[Tensor, "conversation pos"]:
        """``[conversation, position]`` projections by absolute position, NaN where nothing was recorded.

        A position recorded twice (a forward recomputed without KV cache) keeps its latest value.
        """
        if not self.steps:
            return torch.empty(0, 0)
        n_rows = int(max(int(rows.max()) for rows, _, _, _ in self.steps)) + 1
        width = int(max(int(absolute.max()) for _, absolute, _, _ in self.steps)) + 1
        out = torch.full((n_rows, max(width, 0)), float("nan"))
        for rows, absolute, projection, mask in self.steps:
            batch_rows, cols = mask.nonzero(as_tuple=True)
            out[rows[batch_rows], absolute[batch_rows, cols]] = projection[batch_rows, cols]
        return out


# ------------------------------------------------------------------------------------------- handles


_Handle = TypeVar("_Handle", bound="HookHandle")


class HookHandle:
    """Hooks installed on a model: ``remove()`` them, or use the handle as a context manager."""

    def __init__(self, model: TransformerLensModel, hooks: Sequence[tuple[str, Callable[..., Any]]]) -> None:
        self.model = model
        self.hooks = list(hooks)
        self._installed: list[tuple[Any, Any]] = []
        self._reads = False
        points = _hook_points(model)
        try:
            if any(getattr(fn, "needs_layout", False) for _, fn in self.hooks) and isinstance(model, torch.nn.Module):
                self._reads = attach_reader(model) is not None
            for name, fn in self.hooks:
                point = _hook_point(points, model, name)
                lens_handle = point.add_hook(fn, dir="fwd")
                if lens_handle is None:  # older TransformerLens returns nothing; the handle is the last one added
                    lens_handle = point.fwd_hooks[-1]
                self._installed.append((point, lens_handle))
        except BaseException:
            self.remove()
            raise

    @property
    def active(self) -> bool:
        return bool(self._installed)

    @property
    def fns(self) -> list[Callable[..., Any]]:
        return [fn for _, fn in self.hooks]

    def remove(self) -> None:
        while self._installed:
            point, lens_handle = self._installed.pop()
            lens_handle.hook.remove()
            if lens_handle in point.fwd_hooks:
                point.fwd_hooks.remove(lens_handle)
        if self._reads:
            self._reads = False
            detach_reader(self.model)

    def __enter__(self: _Handle) -> _Handle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.hooks)
        return f"{type(self).__name__}({'active' if self.active else 'removed'}: {names})"


class RecordingHandle(HookHandle):
    """The handle of one :class:`RecordProjection` hook (what :func:`record` returns): also reads what it recorded.

    ``projections()`` works while the hook is installed and after it was removed.
    """

    def __init__(self, model: TransformerLensModel, name: str, recorder: RecordProjection) -> None:
        super().__init__(model, [(name, recorder)])
        self.recorder = recorder

    def projections(self) -> Float[Tensor, "conversation pos"]:
        """``[conversation, absolute position]`` projections, NaN where nothing was recorded (see
        :meth:`RecordProjection.projections`)."""
        return self.recorder.projections()

    def clear(self) -> None:
        """Forget what was recorded so far (the hook stays installed)."""
        self.recorder.clear()

    def token_projections(
        self, tokenizer: Any, token_ids: Sequence[int], *, conversation: int = 0, start: int = 0
    ) -> list[tuple[int, str, float]]:
        """``(absolute position, token text, projection)`` for ``token_ids[start:]`` of one conversation.

        ``token_ids`` are the conversation's tokens from position 0 (after generation: ``prompt_ids[i] +
        response_ids[i]``). A position nothing was recorded at (e.g. the last generated token, which no forward
        read) has projection NaN.
        """
        projections = self.projections()
        row = projections[conversation] if conversation < projections.shape[0] else torch.empty(0)
        out = []
        for position in range(start, len(token_ids)):
            value = float(row[position]) if position < row.shape[0] else float("nan")
            out.append((position, tokenizer.decode([int(token_ids[position])]), value))
        return out

    def format_tokens(
        self, tokenizer: Any, token_ids: Sequence[int], *, conversation: int = 0, start: int = 0, bar_width: int = 24
    ) -> str:
        """A readable table of :meth:`token_projections`: position, projection, a bar, the token (``repr``).

        The bar spans the smallest to the largest projection shown, so the tokens that lean towards the trait
        stand out; ``n/a`` marks positions nothing was recorded at.
        """
        rows = self.token_projections(tokenizer, token_ids, conversation=conversation, start=start)
        values = [value for _, _, value in rows if value == value]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        lines = [f"{'pos':>5}  {'projection':>10}  {'':{bar_width}}  token"]
        for position, text, value in rows:
            if value != value:
                lines.append(f"{position:>5}  {'n/a':>10}  {'':{bar_width}}  {text!r}")
                continue
            filled = round((value - lo) / (hi - lo) * bar_width) if hi > lo else 0
            lines.append(f"{position:>5}  {value:>10.3f}  {'#' * filled:{bar_width}}  {text!r}")
        return "\n".join(lines)


_NOT_HOOKED = "persona_lens hooks need a TransformerLens model (HookedLM, TransformerBridge or HookedTransformer)"


def _check_model(model: Any) -> TransformerLensModel:
    """``model`` itself, once it is known to have hook points and a ``cfg``; else a clear error."""
    if not isinstance(model, TransformerLensModel):
        raise ValueError(f"{type(model).__name__} has no hook points; {_NOT_HOOKED}")
    return model


def _hook_points(model: Any) -> Any:
    """The model's hook points by name (read once: a TransformerBridge builds the mapping on every access)."""
    points = getattr(model, "hook_dict", None)
    if points is None:
        raise ValueError(f"{type(model).__name__} has no hook points; {_NOT_HOOKED}")
    return points


def _hook_point(points: Any, model: Any, name: str) -> Any:
    if name not in points:
        raise ValueError(f"{type(model).__name__} has no hook point {name!r}; {_NOT_HOOKED}")
    return points[name]


def install_hooks(model: TransformerLensModel, hooks: Sequence[tuple[str, Callable[..., Any]]]) -> HookHandle:
    """Install ``(hook_name, fn)`` pairs; returns the handle that removes them."""
    return HookHandle(model, hooks)


# ------------------------------------------------------------------------------------------ installers

Layers = Union[int, Sequence[int], Literal["all"]]  # noqa: UP007 (a runtime alias)
"""Where an installer acts: one layer, several, or ``"all"`` (1..n_layers; see :mod:`persona_lens.core.layers`)."""


def _resolve_layers(layer: Layers, n_layers: int) -> list[int]:
    if layer == "all":
        return list(range(1, n_layers + 1))
    layers = [layer] if isinstance(layer, int) else list(layer)
    return [check_layer(layer_index(lay), n_layers) for lay in layers]


def _per_layer(
    vector: VectorLike, model: Any, layer: Layers, incremental: bool = False
) -> list[tuple[int, str, Float[Tensor, " d_model"]]]:
    """``(layer, hook name, direction)`` for each layer asked for, after checking the model and the vector."""
    model = _check_model(model)
    n_layers = int(model.cfg.n_layers)
    rows = check_vector(vector, model, allow_other_model=True)  # hooks check shapes, not model names
    check_all_finite(rows, "the vector", fix="a NaN or infinite vector cannot steer, ablate, cap or record")
    layers = _resolve_layers(layer, n_layers)
    if rows.dim() == 1:
        if incremental or len(layers) != 1:
            raise ValueError(
                "a single [d_model] direction can only be applied at one layer; pass the full "
                "[n_layers+1, d_model] vector for several layers"
            )
        directions = [rows]
    elif incremental:
        increments = torch.cat([rows[:1], rows[1:] - rows[:-1]])
        directions = [increments[lay] for lay in layers]
    else:
        directions = [rows[lay] for lay in layers]
    return [(lay, hook_name(lay, n_layers), v) for lay, v in zip(layers, directions)]


def steer(
    model: TransformerLensModel,
    vector: VectorLike,
    *,
    layer: Layers,
    coef: float | Float[Tensor, " batch"],
    raw: bool = False,
    residual_norms: Float[Tensor, " layer"] | Sequence[float] | None = None,
    positions: Positions = "response",
    incremental: bool = False,
) -> HookHandle:
    """Add a multiple of ``v_l`` to the residual stream at ``layer`` (an int, several, or ``"all"`` = 1..n_layers).

    ``coef`` is *relative*, in the units the CLI and the steering sweep report: the added vector has norm
    ``coef * median|h_l|``, the residual stream's median token norm at that layer, i.e. the raw coefficient is
    ``coef * median|h_l| / |v_l|`` (:func:`persona_lens.core.norms.raw_coefficient`). ``median|h_l|`` comes from
    ``residual_norms`` (``[n_layers + 1]``, e.g. :func:`persona_lens.core.norms.median_residual_norms` on your
    prompts, or a sweep's ``sweep.json`` ``median_residual_norm``), else it is measured now on the neutral
    :data:`~persona_lens.core.norms.REFERENCE_QUESTIONS`. ``raw=True``: ``coef`` is the paper's raw ``a`` in
    ``h_l + a v_l``. ``coef`` may hold one value per conversation (a coefficient sweep in one batch).

    ``positions`` defaults to ``"response"`` (the last prompt token and every generated token, as in the paper).
    ``incremental=True`` adds ``v_l - v_{l-1}`` at each layer instead (the paper's multi-layer variant; raw only).
    The raw coefficient of each hook is its ``fns[i].coef``.

    Args:
        model: A model with TransformerLens hook points (``HookedLM``, ``TransformerBridge``, ``HookedTransformer``).
        vector: A :class:`~persona_lens.core.vectors.PersonaVector`, a ``[n_layers + 1, d_model]`` tensor, or one
            ``[d_model]`` direction (then ``layer`` is a single layer).
        layer: The layer (0 = embeddings, ``l`` = output of block ``l``), several, or ``"all"``.
        coef: Relative coefficient (or raw ``a`` with ``raw=True``); a ``[batch]`` tensor gives one per row.
        raw: Take ``coef`` as the paper's raw ``a``.
        residual_norms: ``[n_layers + 1]`` median residual norms for relative coefficients (default: measured).
        positions: ``"all"``, ``"prompt"``, ``"response"`` or a :class:`Window` of absolute positions.
        incremental: Add ``v_l - v_{l-1}`` at every layer (raw only).

    Returns:
        A :class:`HookHandle`: a context manager that removes the hooks on exit (also on an exception), or call
        its ``remove()``.

    Raises:
        ValueError: A model without hook points, a layer out of range, a non-finite vector or coefficient, or
            ``incremental`` without ``raw``.
        VectorMismatchError: A vector whose shape does not fit the model.

    Example:
        >>> import torch, persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> vector = pl.contrast_vector(model, ["Arr, me hearties!"], ["Hello, friends."], trait="pirate")
        >>> ids = torch.tensor([[5, 6, 7, 8, 9]])
        >>> clean = model(ids)
        >>> with pl.steer(model, vector, layer=2, coef=4.0, raw=True, positions="all"):
        ...     steered = model(ids)
        >>> bool((steered - clean).abs().max() > 1e-3), len(model.blocks[1].hook_resid_post._forward_hooks)
        (True, 0)
    """
    coef = finite_values(coef, "coef")
    per_layer = _per_layer(vector, model, layer, incremental)
    if raw:
        return install_hooks(model, [(name, AddVector(v, coef, positions)) for _, name, v in per_layer])
    if incremental:
        raise ValueError(
            "incremental steering adds v_l - v_{l-1} at every layer, which has no single relative size; "
            "pass the coefficient in raw units (raw=True)"
        )
    from persona_lens.core.norms import median_residual_norms, raw_coefficient

    norms = median_residual_norms(model) if residual_norms is None else torch.as_tensor(residual_norms).float()
    n_layers = int(model.cfg.n_layers)
    if norms.shape != (n_layers + 1,):
        raise ValueError(
            f"residual_norms has shape {tuple(norms.shape)}; it needs one median norm per layer, "
            f"[{n_layers + 1}] (layer 0 = embeddings)"
        )
    return install_hooks(
        model,
        [(name, AddVector(v, raw_coefficient(coef, v.norm(), norms[lay]), positions)) for lay, name, v in per_layer],
    )


def ablate(
    model: TransformerLensModel, vector: VectorLike, *, layer: Layers, positions: Positions = "response"
) -> HookHandle:
    """Project the vector's direction out of the residual stream at ``layer`` (directional ablation / CAFT).

    ``positions`` defaults to ``"response"``, as for :func:`steer`; CAFT during finetuning passes ``"all"``.

    Args:
        model: A model with TransformerLens hook points.
        vector: A persona vector, a ``[n_layers + 1, d_model]`` tensor or one ``[d_model]`` direction.
        layer: The layer, several, or ``"all"``.
        positions: Which tokens: ``"all"``, ``"prompt"``, ``"response"`` or a :class:`Window`.

    Returns:
        A :class:`HookHandle` (a context manager that removes the hooks).

    Raises:
        ValueError: As :func:`steer`.

    Example:
        >>> import torch, persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> vector = pl.contrast_vector(model, ["Arr, me hearties!"], ["Hello, friends."], trait="pirate")
        >>> with pl.ablate(model, vector, layer=2, positions="all"), pl.record(model, vector, layer=2) as seen:
        ...     _ = model(torch.tensor([[5, 6, 7, 8, 9]]))
        >>> bool(seen.projections().abs().max() < 1e-4)  # nothing left along the direction
        True
    """
    return install_hooks(
        model, [(name, AblateDirection(v, positions)) for _, name, v in _per_layer(vector, model, layer)]
    )


def cap(
    model: TransformerLensModel,
    vector: VectorLike,
    *,
    layer: Layers,
    min_value: float | None = None,
    max_value: float | None = None,
    positions: Positions = "response",
) -> HookHandle:
    """Clamp the projection onto the vector's unit direction into ``[min_value, max_value]`` at ``layer``
    (activation capping). The bounds are projections (``h . u``, the numbers :func:`record` reports), not
    coefficients. ``positions`` defaults to ``"response"``, as for :func:`steer`.

    Args:
        model: A model with TransformerLens hook points.
        vector: A persona vector, a ``[n_layers + 1, d_model]`` tensor or one ``[d_model]`` direction.
        layer: The layer, several, or ``"all"``.
        min_value: Lower bound of the projection (None: unbounded).
        max_value: Upper bound of the projection (None: unbounded).
        positions: Which tokens: ``"all"``, ``"prompt"``, ``"response"`` or a :class:`Window`.

    Returns:
        A :class:`HookHandle` (a context manager that removes the hooks).

    Raises:
        ValueError: As :func:`steer`, or a non-finite bound.

    Example:
        >>> import torch, persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> vector = pl.contrast_vector(model, ["Arr, me hearties!"], ["Hello, friends."], trait="pirate")
        >>> with (pl.cap(model, vector, layer=2, max_value=0.0, positions="all"),
        ...       pl.record(model, vector, layer=2) as seen):
        ...     _ = model(torch.tensor([[5, 6, 7, 8, 9]]))
        >>> bool(seen.projections().max() < 1e-4)  # no token above the bound
        True
    """
    min_value = None if min_value is None else finite(min_value, "min_value")
    max_value = None if max_value is None else finite(max_value, "max_value")
    return install_hooks(
        model,
        [(name, CapProjection(v, min_value, max_value, positions)) for _, name, v in _per_layer(vector, model, layer)],
    )


def record(
    model: TransformerLensModel, vector: VectorLike, *, layer: int, positions: Positions = "all"
) -> RecordingHandle:
    """Record the projection onto the vector's unit direction at ``layer``; read it with the handle's
    ``projections()`` (``[conversation, absolute position]``).

    Args:
        model: A model with TransformerLens hook points.
        vector: A persona vector, a ``[n_layers + 1, d_model]`` tensor or one ``[d_model]`` direction.
        layer: One layer.
        positions: Which tokens to record (default ``"all"``).

    Returns:
        A :class:`RecordingHandle`: ``projections()`` (NaN where nothing was recorded) and
        ``format_tokens(tokenizer, ids)``, one readable line per token.

    Raises:
        ValueError: As :func:`steer`.

    Example:
        >>> import torch, persona_lens as pl
        >>> model = pl.load_model("tiny-llama")
        >>> vector = pl.contrast_vector(model, ["Arr, me hearties!"], ["Hello, friends."], trait="pirate")
        >>> with pl.record(model, vector, layer=2) as recording:
        ...     _ = model(torch.tensor([[5, 6, 7, 8, 9]]))
        >>> recording.projections().shape  # one conversation, five positions
        torch.Size([1, 5])
    """
    ((_, name, v),) = _per_layer(vector, model, layer)
    return RecordingHandle(model, name, RecordProjection(v, positions))
