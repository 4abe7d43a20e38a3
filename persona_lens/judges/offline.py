"""Offline judge features: what cheap, honest measurements say about a (question, reply) pair, and a small logistic
regression over them fit to a reader's labels.

Features (:data:`FEATURES`), per reply:

* the rule coherence score and its five factors (:func:`persona_lens.judges.rule.coherence_factors`: length,
  letters, distinct trigrams, loops, known words), and the share of known words itself (an English word list,
  ``english-words``, plus French and pirate lexicons);
* the unsteered model's likelihood of the reply given the question: mean per-token NLL (nats) in the best of the
  judge's contexts (None = the template's default, and the trait's own system prompt, so a style the model produces
  when told to is not taken for nonsense), the 90th percentile of the per-token NLLs and the share of tokens above
  :data:`SURPRISE_NATS` (word salad is made of surprising tokens; a fluent reply has few), all response tokens;
* relevance: the gain ``NLL(reply | unrelated question) - NLL(reply | question)`` in the same context (as in
  :mod:`persona_lens.judges.likelihood`);
* the number of words (log).

No calibration is generated: every feature is a forward pass of the unsteered model over the reply, or a rule.

The judge is a two-stage cascade (:data:`GATE`): the model-free fit on the rule features runs first, and a reply it
gives less than a 5% chance of being coherent (word salad, loops, no known words) keeps that probability without the
model's three forward passes. The gate was read off a grid (0.005 to 0.2) on the labeled set: on dev (299 replies)
no gated reply, at any value of the grid, is coherent to the full judge or to either reader; 0.05 takes 41% of dev.
On test (305; its figures were printed beside dev's for the whole grid, not held out for this choice) 0.05 takes 40%,
changes no decision of the full judge at 50 or 75, and holds one reply the readers call coherent (the full judge also
says no). ``benchmarks/judges_agreement.py`` reports the cascade beside the full judge. Replies steered into salad
are most of a sweep's high-coefficient cells, so the gate saves most there.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from persona_lens.core.chat import encode_prompt, make_messages
from persona_lens.core.hooked_model import HookedLM
from persona_lens.judges.base import COHERENCE_RUBRIC, Score, Verdict, check_items, check_rubric
from persona_lens.judges.likelihood import check_unhooked, response_nlls, response_token_nlls, unrelated_question
from persona_lens.judges.rule import coherence_factors, known_word_share, score_coherence

__all__ = [
    "FEATURES",
    "RULE_FEATURES",
    "MODEL_FEATURES",
    "SURPRISE_NATS",
    "GATE",
    "reply_features",
    "LogisticModel",
    "fit_logistic",
    "JUDGE_VERSION",
    "WEIGHTS_FILE",
    "load_weights",
    "copy_model",
    "OfflineCoherenceJudge",
]

#: A token whose NLL under the unsteered model is above this many nats counts as surprising.
SURPRISE_NATS = 8.0
#: The cascade's gate: a reply whose rule-only probability of coherence is below this keeps it, unread by the model.
GATE = 0.05
_MAX_REPLY_TOKENS = 256
RULE_FEATURES = ("rule_coherence", "length", "letters", "trigrams", "loops", "words", "known_word_share", "log_words")
MODEL_FEATURES = ("nll_mean", "nll_p90", "surprise_share", "relevance_gain")
FEATURES = RULE_FEATURES + MODEL_FEATURES


def _reply_ids(model: HookedLM, reply: str) -> list[int]:
    return list(model.tokenizer(reply, add_special_tokens=False)["input_ids"])[:_MAX_REPLY_TOKENS]


def _check_context(model: HookedLM, lengths: Sequence[tuple[str, int]]) -> None:
    """Refuse an item whose prompt and reply are longer than the model's context: its likelihoods would be read at
    positions the model was never trained on (a 10,000-word question was read, in 28 s on a tiny model, silently)."""
    limit = getattr(getattr(model.hf_model, "config", None), "max_position_embeddings", None)
    for question, length in lengths:
        if isinstance(limit, int) and length > limit:
            excerpt = question[:40] + ("..." if len(question) > 40 else "")
            raise ValueError(
                f"the item of question {excerpt!r}: its question, system prompt and reply are {length} tokens, "
                "more than the "
                f"{limit}-token context of {model.cfg.model_name}; shorten the question (the reply is cut to "
                f"{_MAX_REPLY_TOKENS} tokens already)"
            )


def reply_features(
    model: HookedLM | None,
    items: Sequence[tuple[str, str]],
    contexts: Sequence[Sequence[str | None]] | Sequence[str | None] = (None,),
    *,
    batch_size: int = 16,
) -> Float[np.ndarray, "n feature"]:
    """:data:`FEATURES` of each (question, reply), one row each (columns in that order). ``contexts``: the system
    prompts the reply is read under (one tuple for all items, or one tuple per item); the lowest mean NLL counts.
    With ``model=None`` only :data:`RULE_FEATURES` are computed. An empty reply gets the worst value of every
    model feature (it has no tokens)."""
    n = len(items)
    rule = np.zeros((n, len(RULE_FEATURES)))
    for i, (question, reply) in enumerate(items):
        factors = coherence_factors(reply)
        words = len(reply.split())
        rule[i] = [
            score_coherence(question, reply) / 100.0,
            *factors.values(),
            known_word_share(reply),
            math.log1p(words),
        ]
    if model is None:
        return rule
    per_item = list(contexts) if n and contexts and isinstance(contexts[0], (list, tuple)) else [tuple(contexts)] * n  # type: ignore[list-item]
    if len(per_item) != n:
        raise ValueError(f"{len(per_item)} context tuples for {n} items")
    replies = [_reply_ids(model, reply) for _, reply in items]
    scored = [i for i in range(n) if replies[i]]
    best: dict[int, tuple[np.ndarray, str | None]] = {}
    width = max((len(per_item[i]) for i in scored), default=0)
    for c in range(width):  # one context at a time: every reply under it shares its prompt's forward pass
        members = [i for i in scored if c < len(per_item[i])]
        rows = [
            (encode_prompt(model.tokenizer, make_messages(items[i][0], system=per_item[i][c])), replies[i])
            for i in members
        ]
        _check_context(model, [(items[i][0], len(prompt) + len(reply)) for i, (prompt, reply) in zip(members, rows)])
        for i, values in zip(members, response_token_nlls(model, rows, batch_size=batch_size)):
            if i not in best or np.mean(values) < best[i][0].mean():
                best[i] = (np.asarray(values), per_item[i][c])
    unrelated = response_nlls(
        model,
        [
            (
                encode_prompt(model.tokenizer, make_messages(unrelated_question(items[i][0]), system=best[i][1])),
                replies[i],
            )
            for i in scored
        ],
        batch_size=batch_size,
    )
    features = np.zeros((n, len(MODEL_FEATURES)))
    features[:] = [20.0, 20.0, 1.0, -5.0]  # no tokens: the worst of each
    for i, far in zip(scored, unrelated):
        values = best[i][0]
        features[i] = [
            values.mean(),
            np.percentile(values, 90),
            float(np.mean(values > SURPRISE_NATS)),
            far - values.mean(),
        ]
    return np.concatenate([rule, features], axis=1)


@dataclass(frozen=True)
class LogisticModel:
    """``P(yes) = sigmoid(bias + sum_k weight_k * (x_k - mean_k) / scale_k)`` over named features."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    l2: float

    def probability(self, x: Float[np.ndarray, "n feature"]) -> Float[np.ndarray, " n"]:
        z = (np.asarray(x, dtype=float) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_dict(self) -> dict:
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
            "l2": self.l2,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LogisticModel:
        return cls(
            tuple(data["features"]),
            tuple(data["mean"]),
            tuple(data["scale"]),
            tuple(data["weights"]),
            float(data["bias"]),
            float(data["l2"]),
        )


def fit_logistic(
    x: Float[np.ndarray, "n feature"],
    y: Sequence[int],
    features: Sequence[str],
    *,
    l2: float = 1.0,
    balanced: bool = True,
    iterations: int = 50,
) -> LogisticModel:
    """L2-regularised logistic regression by Newton's method on standardised features (the bias unpenalised);
    ``balanced`` weighs each class by half over its count, so a rare class counts as much as a common one."""
    x = np.asarray(x, dtype=float)
    t = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or x.shape[1] != len(features):
        raise ValueError(f"features {x.shape} do not match {t.shape[0]} labels and {len(features)} names")
    if not (t == 1).any() or not (t == 0).any():
        raise ValueError("fitting needs both classes among the labels")
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale == 0] = 1.0
    z = np.concatenate([(x - mean) / scale, np.ones((x.shape[0], 1))], axis=1)
    sample = (np.where(t == 1, 0.5 / t.sum(), 0.5 / (1 - t).sum()) * len(t)) if balanced else np.ones_like(t)
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        gradient = z.T @ (sample * (p - t)) + penalty * w
        hessian = (z * (sample * p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticModel(
        tuple(features),
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in w[:-1]),
        float(w[-1]),
        float(l2),
    )


# ---------------------------------------------------------------------------------------------------------------------
# the judge

#: Bumped whenever the features or the shipped weights change (caches key on the judge id).
JUDGE_VERSION = 2
WEIGHTS_FILE = Path(__file__).with_name("offline_weights.json")


def load_weights(path: str | Path = WEIGHTS_FILE) -> dict[str, dict[str, LogisticModel]]:
    """``model name -> {"coherence": LogisticModel, ...}`` from the weights file (the key ``"*"`` holds the
    model-free fit on :data:`RULE_FEATURES`, used for models without their own)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {
        name: {target: LogisticModel.from_dict(fit) for target, fit in fits.items() if target != "source"}
        for name, fits in data["models"].items()
    }


def _resolve_read_dtype(model: HookedLM | None, read_dtype: str | None) -> str | None:
    """``"auto"``: bfloat16 for a float32 model on a CPU with native bfloat16 matrix units (AVX512-BF16 / AMX, where
    it halves the reading time), else the model's own dtype (None); a name: that dtype, None if it is the model's."""
    if read_dtype is None:
        return None
    dtype = None if read_dtype == "auto" else getattr(torch, str(read_dtype), None)
    if read_dtype != "auto" and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        # checked also where no model reads (a model without its own fit): a typo is refused, never ignored
        raise ValueError(f"read_dtype {read_dtype!r}: use 'auto', None, 'float32', 'bfloat16' or 'float16'")
    if model is None:
        return None
    current = next(model.hf_model.parameters()).dtype
    if read_dtype == "auto":
        native = current == torch.float32 and next(model.hf_model.parameters()).device.type == "cpu"
        return "bfloat16" if native and torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None if dtype == current else read_dtype


def copy_model(model: HookedLM, dtype: str) -> HookedLM:
    """An independent copy of ``model`` in ``dtype``, with no hook of the original (a steering hook installed on
    ``model`` later does not reach it)."""
    hf_model = copy.deepcopy(model.hf_model)
    for module in hf_model.modules():  # the original's wiring into its hook points must not come along
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return HookedLM(hf_model.to(getattr(torch, dtype)).eval(), model.tokenizer, model.cfg.model_name)


class OfflineCoherenceJudge:
    """Coherence-and-on-topic as ``100 * P(a reader says coherent)`` from a logistic regression over
    :data:`FEATURES`, fit to a reader's labels of SmolLM2-135M-Instruct replies (``benchmarks/labels/``, dev split)
    and shipped in :data:`WEIGHTS_FILE`.

    The likelihood features are the judged model's own (unsteered) likelihoods, so they are only meaningful for the
    model the weights were fit on: for any other model (or ``model=None``) the judge uses the model-free fit over
    :data:`RULE_FEATURES`, and says so in ``judge_id`` (``...:rules``) and :attr:`uses_model`. ``contexts``: the
    system prompts a reply is read under (None = the template's default; add the trait's own prompt so its style
    counts as fluent). Scores with the unsteered model: raises if hooks are installed. ``gate``: the cascade's
    threshold on the model-free fit (:data:`GATE`; 0 reads every reply with the model). ``read_dtype``: the dtype
    the likelihoods are read in; ``"auto"`` reads a float32 model on a CPU with native bfloat16 units through a
    bfloat16 copy (half the time; measured against the readers with the float32 reading in
    ``benchmarks/results/judges.md``), and is part of :attr:`judge_id`.
    """

    def __init__(
        self,
        model: HookedLM | None,
        contexts: Sequence[str | None] = (None,),
        *,
        weights: str | Path = WEIGHTS_FILE,
        batch_size: int = 16,
        gate: float = GATE,
        read_dtype: str | None = "auto",
    ) -> None:
        from persona_lens.core.validate import positive_int, probability

        gate = probability(gate, "gate")  # NaN or a negative gate silently read every reply; above 1, none
        batch_size = positive_int(batch_size, "batch_size")
        fits = load_weights(weights)
        name = getattr(getattr(model, "cfg", None), "model_name", None)
        self.uses_model = model is not None and name in fits and "coherence" in fits[name]
        self.model = model if self.uses_model else None
        if not self.uses_model and "coherence" not in fits.get("*", {}):
            raise ValueError(f"{weights} has no coherence fit for {name} nor a model-free one ('*')")
        self.fit = fits[name]["coherence"] if self.uses_model else fits["*"]["coherence"]
        #: The model-free fit the cascade's gate reads (None: no gate, every reply gets the model's passes).
        self.gate_fit = (
            fits["*"]["coherence"] if self.uses_model and gate > 0 and "coherence" in fits.get("*", {}) else None
        )
        self.gate = gate if self.gate_fit is not None else 0.0
        self.model_name = name if self.uses_model else None
        self.contexts = tuple(contexts) or (None,)
        self.batch_size = batch_size
        #: The dtype the model's likelihoods are read in (None: the model's own; a copy of the model otherwise).
        self.read_dtype = _resolve_read_dtype(self.model, read_dtype)
        self._reader: HookedLM | None = None

    @property
    def reader(self) -> HookedLM | None:
        """The model the likelihood features are read with: the judged model itself, or (``read_dtype``) an
        unhooked copy of it in that dtype, made at first use."""
        if self.model is None or self.read_dtype is None:
            return self.model
        if self._reader is None:
            self._reader = copy_model(self.model, self.read_dtype)
        return self._reader

    @property
    def judge_id(self) -> str:
        fits = [self.fit.to_dict(), None if self.gate_fit is None else self.gate_fit.to_dict(), self.gate]
        if self.read_dtype is not None:
            fits.append(self.read_dtype)
        fingerprint = hashlib.sha256(json.dumps([*fits, list(self.contexts)]).encode()).hexdigest()[:12]
        source = self.model_name if self.uses_model else "rules"
        return f"offline-coherence@v{JUDGE_VERSION}:{source}?fit={fingerprint}"

    def __repr__(self) -> str:
        return f"OfflineCoherenceJudge({self.model_name or 'rules'!r})"

    def features(self, items: Sequence[tuple[str, str]]) -> Float[np.ndarray, "n feature"]:
        """The fit's features of every item (the model's passes over all of them: no gate)."""
        if self.model is not None:
            check_unhooked(self.model)  # a steered model is a mistake even where a copy does the reading
        x = reply_features(self.reader, items, self.contexts, batch_size=self.batch_size)
        return x[:, [FEATURES.index(f) for f in self.fit.features]]

    def probabilities(self, items: Sequence[tuple[str, str]]) -> Float[np.ndarray, " n"]:
        """P(a reader says coherent) of every item: the gate's rule-only probability where it is below
        :attr:`gate`, else the full fit's (the model reads only the replies that pass the gate)."""
        if self.gate_fit is None:
            return self.fit.probability(self.features(items))
        rule = reply_features(None, items)
        probability = self.gate_fit.probability(rule[:, [RULE_FEATURES.index(f) for f in self.gate_fit.features]])
        passed = [i for i in range(len(items)) if probability[i] >= self.gate]
        if passed:
            probability[passed] = self.fit.probability(self.features([items[i] for i in passed]))
        return probability

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        check_rubric(rubric)
        check_items(items)
        if rubric != COHERENCE_RUBRIC:
            raise ValueError(
                "the offline coherence judge measures coherence only; pass it as the coherence judge "
                "(it is given the coherence rubric), not as a trait judge"
            )
        if not items:
            return []
        return [float(100.0 * p) for p in self.probabilities(items)]

    def score_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Every item gets a number, so every verdict is final."""
        return [Verdict(score, "", True) for score in self.score(rubric, items)]
