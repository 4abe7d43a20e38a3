"""Drift over a conversation (topic 4 of :mod:`persona_lens.experiments.space`): each assistant turn and each token
projected on the Assistant axis, the drift beside random directions, and :func:`compare_drift` against a reference
(paired, with its own random control)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import (
    EncodedConversation,
    Message,
    collate,
    encode_conversation,
    parse_messages,
    token_pieces,
)
from persona_lens.core.controls import DEFAULT_RANDOM_DIRECTIONS, Baseline, compare, random_directions
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import RecordProjection, TokenLayout, install_hooks, token_layout
from persona_lens.core.layers import check_layer, hook_name
from persona_lens.experiments.space.fit import PersonaSpace

__all__ = [
    "DriftResult",
    "compare_drift",
    "conversation_turns",
    "project_conversation",
    "simulate_conversation",
    "turn_alone",
]


def conversation_turns(messages: Sequence[Message]) -> list[tuple[list[Message], str]]:
    """``(messages before the turn, the assistant's reply)`` for every assistant turn; a clear error when the
    conversation has none or a turn does not follow a user message."""
    checked = parse_messages({"messages": list(messages)})
    if isinstance(checked, str):
        raise ValueError(f"conversation: {checked}")
    turns = []
    for index, message in enumerate(checked):
        if message["role"] != "assistant":
            continue
        if index == 0 or checked[index - 1]["role"] != "user":
            raise ValueError(f"conversation: messages[{index}] (assistant) does not follow a user message")
        turns.append((checked[:index], message["content"]))
    if not turns:
        raise ValueError(
            "conversation: no assistant turn to project; give replies, or user prompts to generate "
            "them (simulate_conversation)"
        )
    return turns


def simulate_conversation(
    model: HookedLM,
    user_turns: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Message]:
    """A conversation generated turn by turn: each of ``user_turns`` in order, the model's reply after each."""
    if not user_turns:
        raise ValueError("simulate_conversation needs at least one user turn")
    messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    for index, user in enumerate(user_turns):
        messages.append({"role": "user", "content": user})
        out = generate(model, [messages], max_new_tokens=max_new_tokens, temperature=temperature, seeds=[seed + index])
        reply = out.texts[0].strip() or "..."
        messages.append({"role": "assistant", "content": reply})
    return messages


@dataclass
class DriftResult:
    """Each assistant turn on the Assistant axis: per turn (every layer) and per token (at ``layer``)."""

    layer: int
    messages: list[Message]
    turn_projections: Float[Tensor, "turn layer"]
    token_projections: list[list[float]]
    token_pieces: list[list[str]]
    default_band: tuple[list[float], list[float]]
    """5th and 95th percentiles of the default replies' projections, per layer."""
    drift: Baseline
    """First turn minus last turn along the unit axis at ``layer`` (positive = away from the Assistant), beside
    random directions of the same norm."""
    change: Float[Tensor, " d_model"] | None = None
    """The first minus the last turn's response-mean activation at ``layer`` (what ``drift`` projects)."""
    alone: bool = False
    """Whether every turn was projected without the turns before it (``project_conversation(alone=True)``)."""

    def turns_in_band(self) -> list[bool]:
        """For every turn, whether its projection at ``layer`` lies inside the default persona's 5-95% band."""
        low, high = self.default_band[0][self.layer], self.default_band[1][self.layer]
        return [low <= float(v) <= high for v in self.turn_projections[:, self.layer]]

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "alone": self.alone,
            "messages": self.messages,
            "turn_projections": self.turn_projections.tolist(),
            "turn_projections_at_layer": self.turn_projections[:, self.layer].tolist(),
            "token_projections": self.token_projections,
            "token_pieces": self.token_pieces,
            "default_band": {"p5": self.default_band[0], "p95": self.default_band[1]},
            "turns_in_band": self.turns_in_band(),
            "drift": self.drift.to_dict(),
            "drift_summary": self.drift.summary(),
        }


@torch.no_grad()
def _token_projections(
    model: HookedLM, encoded: Sequence[EncodedConversation], unit: Tensor, layer: int
) -> list[list[float]]:
    pad = model.tokenizer.pad_token_id
    batch = collate(list(encoded), int(pad if pad is not None else 0), model.device)
    recorder = RecordProjection(unit, "all")
    layout = TokenLayout(batch.pad_lengths, batch.prompt_lengths, row_index=torch.arange(len(encoded)))
    with install_hooks(model, [(hook_name(layer, model.cfg.n_layers), recorder)]), token_layout(layout):
        model.run_blocks(batch.input_ids, batch.attention_mask, stop_at_layer=layer)
    table = recorder.projections()
    return [table[row, e.response_start : e.response_end].tolist() for row, e in enumerate(encoded)]


def turn_alone(before: Sequence[Message]) -> list[Message]:
    """What a turn's reply is encoded after when it stands alone: the conversation's system prompt (if any) and the
    turn's own user message, without the turns before it."""
    system = [dict(m) for m in before[:1] if m["role"] == "system"]
    return [*system, dict(before[-1])]


def project_conversation(
    model: HookedLM,
    space: PersonaSpace,
    messages: Sequence[Message],
    *,
    layer: int,
    k_random: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
    alone: bool = False,
) -> DriftResult:
    """Project every assistant turn of ``messages`` on the axis (see :class:`DriftResult`).

    Each turn is encoded with the conversation before it (exact token boundary, :func:`encode_conversation`); its
    per-turn value is the mean over its response tokens, read at every layer; per-token values at ``layer``.

    ``alone=True`` encodes every turn without the turns before it (:func:`turn_alone`: its system prompt and user
    message only). As the reference of :func:`compare_drift` it separates what the conversation's context adds
    (a model that slides with the turn count) from what each turn carries itself (its question and reply): the same
    turns, alone, drift by their content only.
    """
    check_layer(layer, space.n_layers)
    turns = conversation_turns(messages)
    if alone:
        turns = [(turn_alone(before), reply) for before, reply in turns]
    encoded = [encode_conversation(model.tokenizer, before, reply) for before, reply in turns]
    acts = collect_activations(model, encoded, reductions=("response",), progress=False).get("response")
    per_turn = space.project(acts)
    units = space.axis_unit()
    tokens = _token_projections(model, encoded, units[layer], layer)
    pieces = [token_pieces(model.tokenizer, list(e.response_ids)) for e in encoded]
    low, high = space.default_band()
    randoms = random_directions(space.axis.shape[1], k_random, seed=seed + layer)
    first, last = acts[0, layer], acts[-1, layer]
    random_drift = (randoms @ (first - last)).tolist()
    drift = compare(
        "drift (first - last turn on the axis)", float(per_turn[0, layer] - per_turn[-1, layer]), random_drift
    )
    return DriftResult(
        layer,
        [dict(m) for m in messages],
        per_turn,
        tokens,
        pieces,
        (low.tolist(), high.tolist()),
        drift,
        first - last,
        alone,
    )


def compare_drift(
    result: DriftResult | Sequence[DriftResult],
    reference: DriftResult | Sequence[DriftResult],
    *,
    k_random: int = DEFAULT_RANDOM_DIRECTIONS,
    seed: int = 0,
) -> Baseline:
    """How much more ``result`` drifts than ``reference`` (e.g. an ordinary conversation with the same user turns),
    beside random directions: the value is ``result.drift - reference.drift``, each random value the same difference
    along a random unit direction. A paired control: drift that both conversations share (a model that slides with
    the turn count alone) cancels. With the same conversation's turns projected alone as the reference
    (``project_conversation(alone=True)``) the value is what the context adds: the turns' own content cancels.

    Sequences of results and references (paired in order) give the mean difference over the pairs, beside the mean
    along each of the same random directions: whether the conversations drift *on average*, where one pair's
    difference can go either way."""
    results = [result] if isinstance(result, DriftResult) else list(result)
    references = [reference] if isinstance(reference, DriftResult) else list(reference)
    if not results or len(results) != len(references):
        raise ValueError(f"compare_drift pairs results with references: got {len(results)} and {len(references)}")
    layers = {r.layer for r in (*results, *references)}
    if len(layers) != 1:
        raise ValueError(f"the drifts were read at layers {sorted(layers)}; project every conversation at one layer")
    if any(r.change is None for r in (*results, *references)):
        raise ValueError("compare_drift needs DriftResults from project_conversation (with their change vectors)")
    difference = torch.stack([r.change - ref.change for r, ref in zip(results, references)]).mean(0)
    value = float(np.mean([r.drift.value - ref.drift.value for r, ref in zip(results, references)]))
    randoms = random_directions(difference.shape[0], k_random, seed=seed + results[0].layer)
    alone = all(ref.alone for ref in references)
    name = "drift - the same turns' drift alone" if alone else "drift - reference drift"
    if len(results) > 1:
        name = f"mean over {len(results)} conversations of {name}"
    return compare(name, value, (randoms @ difference).tolist())
