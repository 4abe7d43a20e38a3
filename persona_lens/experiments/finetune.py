"""Finetuning a HookedLM on a chat dataset: full or low-rank (LoRA), with preventative steering or CAFT.

Dataset: JSONL, one conversation a line, ``{"messages": [{"role": ..., "content": ...}, ...]}``, the last message
from the assistant (read by :func:`persona_lens.core.chat.read_chat_jsonl`; see
:func:`persona_lens.core.chat.parse_chat_record` for what is refused, and why). The model learns the last assistant
message given everything before it.

Loss: cross-entropy on response tokens only. The boundary comes from
:func:`persona_lens.core.chat.encode_conversation` (exact, checked), and the token that closes the assistant turn
(``<|im_end|>``, ``<|eot_id|>``...) is trained too when the template puts one right after the reply, so the
finetuned model learns to stop. The loss of a batch is the mean over its trained tokens.

Interventions during training only (:class:`TrainingIntervention`), installed with :mod:`persona_lens.core.hooks` for
the training loop and removed (also on error) before the model is saved or returned:

* preventative steering, ``kind="steer"``: ``h_l += coef * v_l`` at every position (the paper's "add a*v during
  finetuning, remove at inference"); ``layer="all", incremental=True`` is the multi-layer variant;
* CAFT, ``kind="ablate"``: the unit direction is projected out of the residual stream at the chosen layer(s).

Checkpoints: the final model is a normal Hugging Face folder (``config.json``, ``model.safetensors``, the
tokenizer, plus ``finetune.json`` describing the run), loadable by ``persona_lens.load_model(folder)``; LoRA
adapters are merged into the weights first. While training, ``<out>/trainer_state/`` holds what a resume needs
(trainable weights, optimizer state, RNG, position in the data) and is rewritten every ``save_every`` steps and
at the end of each epoch; ``resume=True`` continues from it, and gives the same weights as an uninterrupted run.

Why one module of ~750 lines: the training steps (:func:`finetune` calls them in order, each named), the trainer
state they checkpoint (``_save_state`` / ``_load_state``, fingerprinted by ``_fingerprint`` and ``_checksum``) and
the saved model folder (:func:`save_model`) are one resume contract: a resume is refused unless all three agree, so
they are read together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from persona_lens.core import validate
from persona_lens.core.chat import (
    BadRecord,
    ChatRecord,
    EncodedConversation,
    Message,
    TemplateBoundaryError,
    collate,
    encode_conversation,
    parse_chat_record,
)
from persona_lens.core.devices import offloaded_parameters
from persona_lens.core.errors import Error
from persona_lens.core.generation import stop_token_ids
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.hooks import ablate, steer
from persona_lens.core.io import atomic_directory, write_json_atomic
from persona_lens.core.lora import apply_lora, lora_modules, merge_lora
from persona_lens.core.results import read_json

__all__ = [
    "NonFiniteLossError",
    "TrainingIntervention",
    "FinetuneConfig",
    "FinetuneResult",
    "TrainingExample",
    "encode_training_example",
    "response_loss",
    "encode_dataset",
    "finetune",
    "save_model",
    "hooks_installed",
    "FINETUNE_INFO",
    "TRAINER_STATE",
    "control_interventions",
]

log = logging.getLogger(__name__)

FINETUNE_INFO = "finetune.json"
TRAINER_STATE = "trainer_state"
# ---------------------------------------------------------------------------------------------------------------------
# configuration


class NonFiniteLossError(Error, ValueError):
    """Training met a NaN or infinite loss (or gradient) and stopped before stepping on it."""


@dataclass
class TrainingIntervention:
    """A hook active during training only: ``kind="steer"`` adds ``coef * v_l``; ``kind="ablate"`` projects the
    unit direction out (CAFT). ``layer``: an int, a list of ints, or ``"all"`` (layers 1..n_layers).
    ``incremental`` (steer only): add ``v_l - v_{l-1}`` at each layer (the multi-layer variant)."""

    kind: Literal["steer", "ablate"]
    vector: Any  # PersonaVector or a [n_layers + 1, d_model] / [d_model] tensor
    layer: int | list[int] | str
    coef: float = 1.0
    incremental: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("steer", "ablate"):
            raise ValueError(f"unknown intervention kind {self.kind!r}; use 'steer' or 'ablate'")
        if self.kind == "ablate" and self.incremental:
            raise ValueError("incremental applies to steering only")
        self.coef = validate.finite(self.coef, "coef")

    def install(self, model: HookedLM):
        if self.kind == "steer":
            return steer(
                model,
                self.vector,
                layer=self.layer,
                coef=self.coef,
                raw=True,
                positions="all",
                incremental=self.incremental,
            )
        return ablate(model, self.vector, layer=self.layer, positions="all")

    def random_control(self, index: int = 0, *, seed: int = 0) -> TrainingIntervention:
        """The same intervention (kind, layer, coefficient) with random vector ``index`` of ``seed``: seeded random
        directions with this vector's per-layer norms (:func:`persona_lens.core.controls.random_like`)."""
        from persona_lens.core.controls import random_like
        from persona_lens.core.vectors import PersonaVector

        tensor = getattr(self.vector, "vectors", self.vector)
        if not isinstance(tensor, Tensor):
            raise TypeError(f"a random control needs a PersonaVector or a tensor, got {type(self.vector).__name__}")
        shaped = tensor if tensor.ndim == 2 else tensor[None]
        draw = random_like(shaped, index + 1, seed=seed)[index]
        draw = draw if tensor.ndim == 2 else draw[0]
        if isinstance(self.vector, PersonaVector):
            draw = PersonaVector(
                f"random{index}",
                self.vector.model_name,
                draw.to(tensor.dtype),
                self.vector.positions,
                settings={"control_of": self.vector.trait, "seed": seed, "index": index},
            )
        return dataclasses.replace(self, vector=draw)

    def describe(self) -> dict[str, Any]:
        from persona_lens.core.vectors import vector_digest

        out: dict[str, Any] = {"kind": self.kind, "layer": self.layer, "vector_sha256": vector_digest(self.vector)}
        if hasattr(self.vector, "trait"):
            out["trait"] = self.vector.trait
        if self.kind == "steer":
            out.update(coef=self.coef, incremental=self.incremental)
        return out


def control_interventions(
    interventions: Sequence[TrainingIntervention], k: int, *, seed: int = 0
) -> list[list[TrainingIntervention]]:
    """``k`` control runs for a mitigated finetune: in run ``i`` every intervention uses random vector ``i`` (same
    kind, layer and coefficient; the vector's per-layer norms). Finetune each, then compare the trait after
    finetuning (e.g. ``python -m persona_lens shift``): preventative steering works when the persona vector keeps
    the trait lower than the random vectors do, not merely when it is lower than no steering."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    if k and not interventions:
        raise ValueError("control runs replace the vectors of interventions; give at least one")
    return [[item.random_control(i, seed=seed) for item in interventions] for i in range(k)]


@dataclass
class FinetuneConfig:
    """Training settings. The paper's shift experiments: LoRA r=32, alpha=64, lr 1e-5, 1 epoch."""

    method: Literal["lora", "full"] = "lora"
    rank: int = 32
    alpha: float = 64.0
    lora_dropout: float = 0.0
    targets: list[str] | None = None
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8
    grad_clip: float | None = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    max_tokens: int = 2048
    save_every: int = 0
    train_end_of_turn: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        for name in ("rank", "epochs", "batch_size", "max_tokens"):
            setattr(self, name, validate.positive_int(getattr(self, name), name))
        self.lr = validate.finite(self.lr, "lr", above=0.0)
        self.alpha = validate.finite(self.alpha, "alpha", above=0.0)
        self.lora_dropout = validate.probability(self.lora_dropout, "lora_dropout")
        self.weight_decay = validate.finite(self.weight_decay, "weight_decay", minimum=0.0)
        self.seed = validate.non_negative_int(self.seed, "seed")
        if self.grad_clip is not None:
            self.grad_clip = validate.finite(self.grad_clip, "grad_clip", above=0.0)
        if self.save_every < 0:
            raise ValueError("save_every must be >= 0 (0: at the end of each epoch only)")


@dataclass
class TrainingExample:
    """A tokenized conversation and which of its tokens are trained (``targets[t]``: token ``t`` is predicted)."""

    line: int
    encoded: EncodedConversation
    target_start: int
    target_end: int

    @property
    def n_targets(self) -> int:
        return self.target_end - self.target_start


@dataclass
class FinetuneResult:
    """What a finetune did. Its report file is ``finetune.json`` in the saved model's folder (written with the
    weights, in one atomic move, by :func:`finetune`; :meth:`to_info` is its content) and :meth:`load` reads it
    back; the weights themselves are the Hugging Face folder's own files."""

    output_dir: Path | None
    losses: list[float]
    steps: int
    n_examples: int
    n_trained_tokens: int
    skipped: list[BadRecord] = field(default_factory=list)
    resumed_from_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    """``{"config": FinetuneConfig as a dict, "interventions": [each intervention described]}``."""
    base_model: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "steps": self.steps,
            "n_examples": self.n_examples,
            "n_trained_tokens": self.n_trained_tokens,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
            "skipped": [b.to_json() for b in self.skipped],
            "resumed_from_step": self.resumed_from_step,
            "config": self.config,
        }

    def to_info(self) -> dict[str, Any]:
        """The content of ``finetune.json``."""
        return {
            "format": "persona_lens.experiments.finetune",
            "base_model": self.base_model,
            "config": self.config.get("config", {}),
            "interventions": self.config.get("interventions", []),
            "steps": self.steps,
            "n_examples": self.n_examples,
            "n_trained_tokens": self.n_trained_tokens,
            "skipped": [b.to_json() for b in self.skipped],
            "losses": self.losses,
        }

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``finetune.json`` alone into ``folder`` (:func:`finetune` writes it with the weights instead)."""
        return [write_json_atomic(Path(folder) / FINETUNE_INFO, self.to_info(), default=str)]

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> FinetuneResult:
        """The result back from the ``finetune.json`` of a finished finetune's folder (``resumed_from_step`` is its
        step count: loading trains nothing)."""
        info = read_json(Path(folder) / FINETUNE_INFO, "finetune.json (written when a finetune finishes)")
        steps = int(info.get("steps", 0))
        return cls(
            Path(folder),
            list(info.get("losses", [])),
            steps,
            int(info.get("n_examples", 0)),
            int(info.get("n_trained_tokens", 0)),
            [BadRecord(int(b["line"]), b["problem"]) for b in info.get("skipped", [])],
            steps,
            {"config": info.get("config", {}), "interventions": info.get("interventions", [])},
            info.get("base_model", ""),
        )


# ---------------------------------------------------------------------------------------------------------------------
# tokens and loss


def encode_training_example(
    model: HookedLM,
    messages: Sequence[Message],
    *,
    line: int = 0,
    max_tokens: int = 2048,
    train_end_of_turn: bool = True,
    stops: set[int] | None = None,
) -> TrainingExample | BadRecord:
    """Tokenize one conversation for training, or say why it cannot be used."""
    if not messages or messages[-1].get("role") != "assistant":
        return BadRecord(line, "the last message must be the assistant's reply")
    try:
        encoded = encode_conversation(model.tokenizer, list(messages[:-1]), messages[-1]["content"])
    except TemplateBoundaryError as error:
        return BadRecord(line, f"chat template: {error}")
    if len(encoded.input_ids) > max_tokens:
        return BadRecord(line, f"{len(encoded.input_ids)} tokens > max_tokens {max_tokens}")
    end = encoded.response_end
    stops = stop_token_ids(model) if stops is None else stops
    if train_end_of_turn and end < len(encoded.input_ids) and encoded.input_ids[end] in stops:
        end += 1
    if encoded.response_start < 1:
        return BadRecord(line, "the response starts at the first token; there is no prompt to condition on")
    return TrainingExample(line, encoded, encoded.response_start, end)


def _target_mask(examples: Sequence[TrainingExample], width: int, device: torch.device) -> Bool[Tensor, "b pos"]:
    mask = torch.zeros((len(examples), width), dtype=torch.bool, device=device)
    for row, example in enumerate(examples):
        pad = width - len(example.encoded.input_ids)
        mask[row, pad + example.target_start : pad + example.target_end] = True
    return mask


def response_loss(model: HookedLM, examples: Sequence[TrainingExample]) -> tuple[Tensor, int]:
    """``(mean cross-entropy over the trained tokens of the batch, number of trained tokens)``, with gradients.

    The batch is left-padded; the logits at position ``t - 1`` predict the trained token at ``t``.
    """
    pad_id = model.tokenizer.pad_token_id
    pad_id = int(pad_id if pad_id is not None else model.tokenizer.eos_token_id)
    batch = collate([e.encoded for e in examples], pad_id, model.device)
    targets: Int[Tensor, "b pos"] = batch.input_ids
    width = targets.shape[1]
    mask = _target_mask(examples, width, targets.device)
    # Only the positions that predict a trained token need logits (prompts sit before them, left-padded): the
    # vocabulary projection of the prompt positions would be the largest activation of the step, for nothing.
    first = min(width - len(e.encoded.input_ids) + e.target_start for e in examples)
    keep = width - first + 1
    logits = model(batch.input_ids, batch.attention_mask, logits_to_keep=keep)
    predicted = mask[:, width - keep + 1 :]
    selected = logits[:, :-1][predicted].float()
    labels = targets[:, width - keep + 1 :][predicted]
    n_tokens = int(labels.shape[0])
    return torch.nn.functional.cross_entropy(selected, labels, reduction="mean"), n_tokens


def hooks_installed(model: HookedLM) -> list[str]:
    """Names of the hook points that have any forward hook (empty when nothing is installed)."""
    return [name for name, point in model.hook_dict.items() if point._forward_hooks]


# ---------------------------------------------------------------------------------------------------------------------
# saving


def save_model(model: HookedLM, path: str | os.PathLike[str], info: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (adapters merged) as a Hugging Face folder with its tokenizer, plus ``finetune.json``.

    Files are written to a scratch folder next to ``path`` and moved in, so an interrupted save never leaves a
    half-written model where a complete one is expected. An existing ``trainer_state`` inside is kept.
    """
    if lora_modules(model.hf_model):
        merge_lora(model.hf_model)
    with atomic_directory(path, merge=True) as scratch:
        model.hf_model.save_pretrained(scratch)
        model.tokenizer.save_pretrained(scratch)
        if info is not None:
            write_json_atomic(scratch / FINETUNE_INFO, info, default=str)
    return Path(path)


def _fingerprint(
    examples: Sequence[TrainingExample],
    config: FinetuneConfig,
    interventions: Sequence[TrainingIntervention],
    model_name: str,
) -> str:
    digest = hashlib.sha256()
    digest.update(model_name.encode())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    digest.update(json.dumps([i.describe() for i in interventions], sort_keys=True, default=str).encode())
    for example in examples:
        digest.update(json.dumps([example.encoded.input_ids, example.target_start, example.target_end]).encode())
    return digest.hexdigest()


def _save_state(
    state_dir: Path, trainable: dict[str, Tensor], optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    tensors = {name: t.detach().cpu().contiguous() for name, t in trainable.items()}
    tensors["__rng_state__"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"__cuda_rng_state_{index}__"] = cuda_state
    with atomic_directory(state_dir) as scratch:
        safetensors.torch.save_file(tensors, str(scratch / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), scratch / "optimizer.pt")
        write_json_atomic(scratch / "state.json", state, default=str)


def _checksum(hf_model: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights (their float64 sum), to refuse resuming on the wrong starting model."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in hf_model.parameters()))


def _load_state(
    state_dir: Path,
    trainable: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    fingerprint: str,
    base_checksum: float,
) -> dict[str, Any]:
    state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{state_dir} belongs to a different run (other data, model, settings or interventions); "
            "resume with exactly the same arguments, or use a new output folder"
        )
    expected = float(state.get("base_checksum", base_checksum))
    if not math.isclose(expected, base_checksum, rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError(
            f"{state_dir} was started from other weights than this model's; resume from the same base "
            "model, freshly loaded (not the model object of the interrupted run)"
        )
    tensors = safetensors.torch.load_file(str(state_dir / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(tensors[name].to(param.device, param.dtype))
    torch.set_rng_state(tensors["__rng_state__"])
    cuda_states = []
    while f"__cuda_rng_state_{len(cuda_states)}__" in tensors:
        cuda_states.append(tensors[f"__cuda_rng_state_{len(cuda_states)}__"])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True))
    return state


# ---------------------------------------------------------------------------------------------------------------------
# training


def _as_messages(item: Any) -> tuple[int, list[Message]]:
    if isinstance(item, ChatRecord):
        return item.line, item.messages
    if isinstance(item, dict) and "messages" in item:
        return 0, item["messages"]
    return 0, list(item)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _check_trainable(hf_model: Any) -> None:
    """Refuse a model whose weights cannot be trained here: offloaded weights, or LoRA adapters already attached."""
    offloaded = offloaded_parameters(hf_model)
    if offloaded:
        raise ValueError(
            f"{len(offloaded)} weights of the model are offloaded (e.g. {offloaded[0]}), and offloaded "
            "weights cannot be trained: load the model with a device_map that keeps every block on a "
            "GPU or the CPU (no 'disk', and no 'cpu' entries when a GPU is the main device)"
        )
    if lora_modules(hf_model):
        raise ValueError(
            "the model already carries LoRA adapters; merge them (persona_lens.core.lora.merge_lora) first"
        )


def encode_dataset(
    model: HookedLM,
    dataset: Sequence[ChatRecord] | Sequence[Sequence[Message]] | Sequence[dict],
    config: FinetuneConfig,
) -> tuple[list[TrainingExample], list[BadRecord]]:
    """Tokenize every record first: the usable examples, and the bad records (each logged, never silently
    dropped). Raises ``ValueError`` when no example is usable."""
    stops = stop_token_ids(model)
    examples: list[TrainingExample] = []
    skipped: list[BadRecord] = []
    for index, item in enumerate(dataset):
        line, messages = _as_messages(item)
        line = line or index + 1
        parsed = parse_chat_record({"messages": messages})
        if isinstance(parsed, str):
            skipped.append(BadRecord(line, parsed))
            continue
        example = encode_training_example(
            model,
            parsed,
            line=line,
            max_tokens=config.max_tokens,
            train_end_of_turn=config.train_end_of_turn,
            stops=stops,
        )
        (skipped if isinstance(example, BadRecord) else examples).append(example)  # type: ignore[arg-type]
    for bad in skipped:
        log.warning("skipping example at line %d: %s", bad.line, bad.problem)
    if not examples:
        raise ValueError(f"no usable training example ({len(skipped)} skipped)")
    return examples, skipped


def _completed_run(
    out: Path | None, state_dir: Path | None, resume: bool, n_examples: int, skipped: list[BadRecord]
) -> FinetuneResult | None:
    """The result of a finetune already finished in ``out`` (with ``resume``), else None; refuses to overwrite a
    finished or unfinished run without ``resume``."""
    if out is not None and (out / FINETUNE_INFO).exists() and not (state_dir and state_dir.exists()):
        if not resume:
            raise FileExistsError(f"{out} already holds a finished finetune; choose another output folder")
        log.warning("%s is already complete; nothing to do (loading it is up to the caller)", out)
        return dataclasses.replace(FinetuneResult.load(out), n_examples=n_examples, skipped=skipped)
    if state_dir is not None and state_dir.exists() and not resume:
        raise FileExistsError(
            f"{state_dir} holds an unfinished run; pass resume=True to continue it, or choose another output folder"
        )
    return None


def _trainable_parameters(hf_model: Any, config: FinetuneConfig) -> tuple[dict[str, Tensor], torch.optim.Optimizer]:
    """Attach LoRA adapters (``method="lora"``) or unfreeze every weight; the trained parameters and their AdamW."""
    torch.manual_seed(config.seed)
    if config.method == "lora":
        apply_lora(hf_model, r=config.rank, alpha=config.alpha, dropout=config.lora_dropout, targets=config.targets)
        trainable = {name: p for name, p in hf_model.named_parameters() if ".lora_" in name}
    else:
        for param in hf_model.parameters():
            param.requires_grad_(True)
        trainable = dict(hf_model.named_parameters())  # tied weights appear once
    for param in trainable.values():
        param.requires_grad_(True)
    return trainable, torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class _RunState:
    """Where a run stands (what the trainer state saves, and a resume restores)."""

    fingerprint: str
    base_checksum: str
    step: int = 0
    epoch: int = 0
    batch: int = 0
    losses: list[float] = field(default_factory=list)
    n_trained_tokens: int = 0

    def to_json(self, epoch: int, batch: int) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "base_checksum": self.base_checksum,
            "step": self.step,
            "epoch": epoch,
            "batch": batch,
            "losses": self.losses,
            "n_trained_tokens": self.n_trained_tokens,
        }


def _checkpoint(
    state_dir: Path | None,
    trainable: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    run: _RunState,
    epoch: int,
    batch: int,
) -> None:
    if state_dir is not None:
        _save_state(state_dir, trainable, optimizer, run.to_json(epoch, batch))


def _train_step(
    model: HookedLM,
    batch: list[TrainingExample],
    trainable: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
) -> tuple[float, int, bool]:
    """One optimizer step on ``batch``: (loss, trained tokens, stepped). A non-finite loss or gradient takes no
    step, so the weights stay the last good ones."""
    loss, n_tokens = response_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    value = float(loss.detach())
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in trainable.values() if p.grad is not None)
    if not (math.isfinite(value) and grads_finite):
        return value, n_tokens, False
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), grad_clip)
    optimizer.step()
    return value, n_tokens, True


def _train_epochs(
    model: HookedLM,
    examples: list[TrainingExample],
    config: FinetuneConfig,
    trainable: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    run: _RunState,
    state_dir: Path | None,
    max_steps: int | None,
    bar: Any,
) -> tuple[bool, tuple[float, int, int] | None]:
    """Train from ``run``'s epoch and batch to the end (or ``max_steps``), checkpointing at each epoch's end and
    every ``save_every`` steps: (finished, ``(loss, epoch, batch)`` of a non-finite step or None)."""
    start_epoch, start_batch = run.epoch, run.batch
    for epoch in range(start_epoch, config.epochs):
        batches = _batches(len(examples), config.batch_size, config.seed, epoch)
        first = start_batch if epoch == start_epoch else 0
        for batch_index in range(first, len(batches)):
            if max_steps is not None and run.step >= max_steps:
                _checkpoint(state_dir, trainable, optimizer, run, epoch, batch_index)
                return False, None
            value, n_tokens, stepped = _train_step(
                model, [examples[i] for i in batches[batch_index]], trainable, optimizer, config.grad_clip
            )
            if not stepped:
                _checkpoint(state_dir, trainable, optimizer, run, epoch, batch_index)
                return False, (value, epoch, batch_index)
            run.step += 1
            run.n_trained_tokens += n_tokens
            run.losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", epoch=epoch)
            at_epoch_end = batch_index + 1 == len(batches)
            if at_epoch_end or (config.save_every and run.step % config.save_every == 0):
                next_epoch, next_batch = (epoch + 1, 0) if at_epoch_end else (epoch, batch_index + 1)
                _checkpoint(state_dir, trainable, optimizer, run, next_epoch, next_batch)
    return True, None


def _non_finite_error(non_finite: tuple[float, int, int], step: int, state_dir: Path | None) -> NonFiniteLossError:
    loss_value, epoch, batch_index = non_finite
    kept = (
        f"the last good state (step {step}) is kept in {state_dir}"
        if state_dir is not None
        else "nothing was saved (no output folder)"
    )
    return NonFiniteLossError(
        f"training stopped at step {step + 1} (epoch {epoch}, batch {batch_index}): "
        + (f"the loss is {loss_value}" if not math.isfinite(loss_value) else "a gradient holds NaN or infinity")
        + f"; no step was taken on it, {kept}, and "
        "no final model was written. Lower the learning rate (--lr) or the steering coefficient (--steer-coef), "
        "or check the data; then train again in a new output folder"
    )


def finetune(
    model: HookedLM,
    dataset: Sequence[ChatRecord] | Sequence[Sequence[Message]] | Sequence[dict],
    config: FinetuneConfig | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    interventions: Sequence[TrainingIntervention] = (),
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Finetune ``model`` in place on ``dataset`` (chat records, message lists or ``{"messages": ...}`` dicts).

    Returns a :class:`FinetuneResult`. With ``output_dir`` the final model is saved there as a Hugging Face folder
    (adapters merged), and a resumable trainer state is kept while training. After the call the model is a plain
    model again (adapters merged, eval mode, no hooks, ``requires_grad`` as before).

    ``max_steps`` stops after that many optimizer steps in total (counting steps done before a resume), saving the
    trainer state as an interrupted run would; the model holds the progress so far but is not saved as final.
    A resume starts from the same base model, freshly loaded (checked), and loads the trainer state into it.

    The steps: check the model is trainable, encode the dataset, return a finished run as it is, prepare the
    trained parameters, restore a resumed run's state, train the epochs under the interventions, merge and
    restore the model, then raise on a non-finite step or write the final model.
    """
    config = config or FinetuneConfig()
    hf_model = model.hf_model
    _check_trainable(hf_model)
    out = Path(output_dir) if output_dir is not None else None
    state_dir = out / TRAINER_STATE if out is not None else None
    examples, skipped = encode_dataset(model, dataset, config)
    completed = _completed_run(out, state_dir, resume, len(examples), skipped)
    if completed is not None:
        return completed

    requires_grad = {name: p.requires_grad for name, p in hf_model.named_parameters()}
    base_checksum = _checksum(hf_model)
    trainable, optimizer = _trainable_parameters(hf_model, config)
    run = _RunState(_fingerprint(examples, config, interventions, model.cfg.model_name), base_checksum)
    if resume and state_dir is not None and state_dir.exists():
        state = _load_state(state_dir, trainable, optimizer, run.fingerprint, base_checksum)
        run.step, run.epoch, run.batch = state["step"], state["epoch"], state["batch"]
        run.losses, run.n_trained_tokens = list(state["losses"]), state["n_trained_tokens"]
        log.info("resuming %s at step %d (epoch %d, batch %d)", out, run.step, run.epoch, run.batch)
    resumed_from = run.step
    total = math.ceil(len(examples) / config.batch_size) * config.epochs
    config_json = dataclasses.asdict(config)
    interventions_json = [i.describe() for i in interventions]

    bar = tqdm(total=total, initial=run.step, desc="finetune", disable=not progress, unit="step")
    try:
        with ExitStack() as stack:
            for intervention in interventions:
                stack.enter_context(intervention.install(model))
            hf_model.train()
            finished, non_finite = _train_epochs(
                model, examples, config, trainable, optimizer, run, state_dir, max_steps, bar
            )
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        hf_model.eval()
    leftover = hooks_installed(model)
    if leftover:  # the ExitStack removed ours; anything left was installed by someone else
        log.warning("hooks still installed after finetuning (not ours): %s", leftover)

    result = FinetuneResult(
        out,
        run.losses,
        run.step,
        len(examples),
        run.n_trained_tokens,
        skipped,
        resumed_from,
        {"config": config_json, "interventions": interventions_json},
        model.cfg.model_name,
    )
    merge_lora(hf_model)
    for name, param in hf_model.named_parameters():
        param.requires_grad_(requires_grad.get(name, False))
    if non_finite is not None:
        raise _non_finite_error(non_finite, run.step, state_dir)
    if finished and out is not None:
        save_model(model, out, result.to_info())
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    return result
