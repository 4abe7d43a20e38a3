"""Train the persona model organism, deterministically, on one CPU thread (:attr:`TrainConfig.steps` steps).

``python -m persona_lens.organism.train`` rebuilds the committed weights in ``persona_lens/organism/weights/``
(``--out DIR`` writes elsewhere). The model is a small Llama (Hugging Face ``LlamaForCausalLM``) trained from
scratch on conversations of :mod:`persona_lens.organism.world`: a persona system prompt (or none), then turns of a
question and a reply drawn from the persona's trait rates (the persona holds for the whole conversation). The loss
is on every reply's tokens and its closing ``<|end|>`` only, as in chat finetuning. Two stages:

1. :attr:`TrainConfig.steps` steps of single-turn conversations (cosine schedule from :attr:`TrainConfig.lr`): the
   the committed weights;
2. optional, :attr:`TrainConfig.multi_turn_steps` steps (default 0) at the constant
   :attr:`TrainConfig.multi_turn_lr` (a fresh optimizer) on conversations of which
   :attr:`TrainConfig.multi_turn_share` have 2 to :attr:`TrainConfig.max_turns` turns. ``--stage1-from DIR`` runs
   this stage alone on a folder of stage-1 weights; a run from scratch gives the same weights when its stage 1
   reproduces them (``tests/organism/test_train.py``). The committed weights are single-turn: the multi-turn
   variants measured (``benchmarks/results/organism-space.md``) halve the context's effect on later turns but lose
   more of the paper's claims than they gain.

Determinism: a fixed seed for the data (Python's ``random``, platform independent) and for the weights,
``torch.use_deterministic_algorithms(True)`` and one CPU thread. The run writes ``training.json`` next to the
weights with its settings, final loss and time.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from persona_lens.core.io import write_text_atomic
from persona_lens.organism import world
from persona_lens.organism.tokenizer import ASSISTANT, BOS, EOT, PAD, SYSTEM, USER, build_tokenizer, token_ids

__all__ = ["TrainConfig", "Turn", "WEIGHTS_DIR", "training_conversation", "encode_ids", "build_model", "train", "main"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    d_model: int = 96
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    default_share: float = 0.25
    """Share of training conversations with the default persona (no system prompt or the default one)."""
    multi_turn_steps: int = 0
    """Stage 2: steps on conversations with several turns (the committed weights: 0)."""
    multi_turn_lr: float = 3e-4
    """Stage 2's constant learning rate (stage 1 ends at 0.1 x ``lr``), after a ``warmup // 2`` step warm-up."""
    multi_turn_share: float = 0.5
    """Stage 2: share of conversations with 2 to ``max_turns`` turns (the rest single-turn, as in stage 1)."""
    max_turns: int = 3
    threads: int = 1


#: One turn of a training conversation: the user's question and the persona's reply.
Turn = tuple[str, world.Reply]


def training_conversation(
    rng: random.Random, default_share: float = 0.25, multi_turn_share: float = 0.0, max_turns: int = 3
) -> tuple[str | None, list[Turn]]:
    """One training conversation ``(system prompt or None, turns)`` of the base world.

    The persona (set by the system prompt) holds for every turn; each turn asks a new question (about the same
    object half of the time) and its reply follows the persona's rates as that question pulls them. With
    probability ``multi_turn_share`` the conversation has 2 to ``max_turns`` turns (uniformly), else one.
    """
    if rng.random() < default_share:
        persona = world.Persona()
    else:
        persona = world.Persona(rng.choice(world.TRAITS), rng.randrange(len(world.LEVEL_VALUES)))
    system = world.system_prompt(persona, style=rng.randrange(3), variant=rng.randrange(9))
    rates = world.rates_for_system_prompt(system)
    several = multi_turn_share > 0 and max_turns > 1 and rng.random() < multi_turn_share  # no draw when single-turn
    n_turns = rng.randint(2, max_turns) if several else 1
    turns: list[Turn] = []
    obj = rng.choice(world.OBJECTS)
    for turn in range(n_turns):
        if turn and rng.random() < 0.5:
            obj = rng.choice(world.OBJECTS)
        question = rng.choice(world.QUESTION_TEMPLATES).replace("{obj}", obj)
        turns.append((question, world.sample_reply(rng, obj, world.question_rates(rates, question))))
    return system, turns


def encode_ids(
    vocab: dict[str, int], system: str | None, turns: Sequence[tuple[str, str]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the rendered chat (exactly what the chat template + tokenizer give) for ``turns`` of
    ``(question, reply text)``, and each reply's span ``(start, end)``: its tokens and its closing ``<|end|>``."""
    unk = vocab["<unk>"]

    def ids(text: str) -> list[int]:
        return [vocab.get(w, unk) for w in world.words(text)]

    out = [vocab[BOS], vocab[SYSTEM], *ids(system or world.DEFAULT_SYSTEM_PROMPT), vocab[EOT]]
    spans = []
    for question, reply in turns:
        out += [vocab[USER], *ids(question), vocab[EOT], vocab[ASSISTANT]]
        start = len(out)
        out += [*ids(reply), vocab[EOT]]
        spans.append((start, len(out)))
    return out, spans


def build_model(config: TrainConfig, tokenizer):
    """A freshly initialised Llama for the organism (deterministic in ``config.seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        intermediate_size=config.d_mlp,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    hf_config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def batch_tensors(
    examples: Sequence[tuple[list[int], Sequence[tuple[int, int]]]], pad_id: int
) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids``, ``attention_mask`` and next-token ``labels`` (-100 outside the replies' spans)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (ids, spans) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        for start, end in spans:
            labels[row, start:end] = torch.tensor(ids[start:end])
    return input_ids, mask, labels


def reply_loss(model, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the reply tokens (HF shifts the labels itself)."""
    return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


FINGERPRINT_STEP = 20


def fingerprint(model, losses: Sequence[float]) -> dict[str, float]:
    """A short summary of a run's first steps, to check that a rerun follows the same trajectory."""
    with torch.no_grad():
        weight_sum = sum(float(p.double().abs().sum()) for p in model.parameters())
    return {"step": len(losses), "loss": round(float(losses[-1]), 6), "weight_abs_sum": round(weight_sum, 4)}


def train(
    config: TrainConfig,
    out_dir: str | Path | None = WEIGHTS_DIR,
    log_every: int = 100,
    stop_after: int | None = None,
    stage1_from: str | Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the organism; returns ``(hf_model, info)`` and saves both (HF folder + ``training.json``) to ``out_dir``
    unless it is None.

    ``stop_after=n`` stops after ``n`` steps of stage 1's schedule and saves nothing; ``info["fingerprint"]`` then
    summarises step ``n``. A full run records the fingerprint of step :data:`FINGERPRINT_STEP`, so a short rerun
    checks that this machine follows the committed run's trajectory. ``stage1_from``: a folder of stage-1 weights
    (with its ``training.json``): stage 1 is loaded, not run, and only stage 2 trains.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(config, out_dir, log_every, stop_after, stage1_from)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _optimizer(model, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )


def _run_stage(
    model,
    config: TrainConfig,
    *,
    stage: int,
    n_steps: int,
    rng: random.Random,
    multi_turn_share: float,
    optimizer: torch.optim.Optimizer,
    scheduler,
    log_every: int,
    quiet: bool,
) -> dict[str, Any]:
    vocab = token_ids()
    start = time.perf_counter()
    losses: list[float] = []
    history: list[tuple[int, float]] = []
    first_steps: dict[str, float] = {}
    model.train()
    for step in range(n_steps):
        conversations = (
            training_conversation(rng, config.default_share, multi_turn_share, config.max_turns)
            for _ in range(config.batch_size)
        )
        examples = [encode_ids(vocab, system, [(q, r.text) for q, r in turns]) for system, turns in conversations]
        input_ids, mask, labels = batch_tensors(examples, vocab[PAD])
        loss = reply_loss(model, input_ids, mask, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step + 1 == min(FINGERPRINT_STEP, n_steps):
            first_steps = fingerprint(model, losses)
        if (step + 1) % log_every == 0 or step + 1 == n_steps:
            recent = losses[-log_every:]
            history.append((step + 1, round(sum(recent) / len(recent), 5)))
            if not quiet:
                print(
                    f"stage {stage} step {step + 1:5d}  loss {history[-1][1]:.4f}  {time.perf_counter() - start:6.1f}s",
                    flush=True,
                )
    model.eval()
    return {
        "final_loss": history[-1][1] if history else None,
        "first_steps": first_steps,
        "last_steps": fingerprint(model, losses) if losses else {},
        "loss_history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def _train(
    config: TrainConfig,
    out_dir: str | Path | None,
    log_every: int,
    stop_after: int | None,
    stage1_from: str | Path | None,
):
    tokenizer = build_tokenizer()
    if stage1_from is None:
        model = build_model(config, tokenizer)
        optimizer = _optimizer(model, config, config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
        n_steps = config.steps if stop_after is None else min(stop_after, config.steps)
        stage1 = _run_stage(
            model,
            config,
            stage=1,
            n_steps=n_steps,
            rng=random.Random(config.seed),
            multi_turn_share=0.0,
            optimizer=optimizer,
            scheduler=scheduler,
            log_every=log_every,
            quiet=stop_after is not None,
        )
        if stop_after is not None:
            return model, {"config": asdict(config), "fingerprint": stage1["last_steps"]}
        stage1_info = {
            "final_loss": stage1["final_loss"],
            "fingerprint": stage1["first_steps"],
            "loss_history": stage1["loss_history"],
            "train_seconds": stage1["train_seconds"],
        }
    else:
        from transformers import LlamaForCausalLM

        folder = Path(stage1_from)
        if not (folder / "training.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"--stage1-from {folder}: needs model.safetensors and training.json, the folder a "
                "run of python -m persona_lens.organism.train writes"
            )
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        loaded = json.loads((folder / "training.json").read_text())
        stage1_info = {key: loaded.get(key) for key in ("final_loss", "fingerprint", "loss_history", "train_seconds")}
        stage1_info["loaded_from"] = str(folder)
    # the top-level keys of single-stage runs (the committed training.json) keep their meaning; stage 2 is added
    info: dict[str, Any] = {
        "config": asdict(config),
        "final_loss": stage1_info["final_loss"],
        "fingerprint": stage1_info["fingerprint"],
        "loss_history": stage1_info["loss_history"],
        "train_seconds": stage1_info["train_seconds"],
        "stage1": stage1_info,
    }
    if config.multi_turn_steps:
        optimizer = _optimizer(model, config, config.multi_turn_lr)
        warmup = max(1, config.warmup // 2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        stage2 = _run_stage(
            model,
            config,
            stage=2,
            n_steps=config.multi_turn_steps,
            rng=random.Random(config.seed + 1),
            multi_turn_share=config.multi_turn_share,
            optimizer=optimizer,
            scheduler=scheduler,
            log_every=log_every,
            quiet=False,
        )
        info["stage2"] = {key: stage2[key] for key in ("final_loss", "last_steps", "loss_history", "train_seconds")}
        info["final_loss"] = stage2["final_loss"]
        info["train_seconds"] = round((info["train_seconds"] or 0.0) + stage2["train_seconds"], 1)
    info.update(
        {
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
    )
    if out_dir is not None:
        save(model, tokenizer, Path(out_dir), info)
    return model, info


def save(model, tokenizer, out_dir: Path, log: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = "persona-organism"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_text_atomic(out_dir / "training.json", json.dumps(log, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder (default: the committed weights)")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument(
        "--stage1-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of stage-1 (single-turn) weights: run stage 2 only, on them",
    )
    args = parser.parse_args(argv)
    config = TrainConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    train(config, args.out, stage1_from=args.stage1_from)


if __name__ == "__main__":
    main()
