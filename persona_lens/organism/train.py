"""Train the persona model organism, deterministically, on one CPU thread (1500 steps: about 22 minutes).

``python -m persona_lens.organism.train`` rebuilds the committed weights in ``persona_lens/organism/weights/``
(``--out DIR`` writes elsewhere). The model is a small Llama (Hugging Face ``LlamaForCausalLM``) trained from
scratch on conversations of :mod:`persona_lens.organism.world`: a persona system prompt (or none), a question, and
a reply drawn from the persona's trait rates. The loss is on the reply tokens and the closing ``<|end|>`` only, as
in chat finetuning.

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

__all__ = ["TrainConfig", "WEIGHTS_DIR", "training_conversation", "encode_ids", "build_model", "train", "main"]

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
    threads: int = 1


def training_conversation(rng: random.Random, default_share: float = 0.25) -> tuple[str | None, str, world.Reply]:
    """One training conversation ``(system prompt or None, question, reply)`` of the base world: the reply follows
    the persona's rates as the question pulls them."""
    if rng.random() < default_share:
        persona = world.Persona()
    else:
        persona = world.Persona(rng.choice(world.TRAITS), rng.randrange(len(world.LEVEL_VALUES)))
    system = world.system_prompt(persona, style=rng.randrange(3), variant=rng.randrange(9))
    obj = rng.choice(world.OBJECTS)
    question = rng.choice(world.QUESTION_TEMPLATES).replace("{obj}", obj)
    rates = world.question_rates(world.rates_for_system_prompt(system), question)
    return system, question, world.sample_reply(rng, obj, rates)


def encode_ids(vocab: dict[str, int], system: str | None, question: str, reply: str) -> tuple[list[int], int]:
    """Token ids of the rendered chat (exactly what the chat template + tokenizer give) and the prompt length."""
    unk = vocab["<unk>"]

    def ids(text: str) -> list[int]:
        return [vocab.get(w, unk) for w in world.words(text)]

    prompt = [vocab[BOS], vocab[SYSTEM], *ids(system or world.DEFAULT_SYSTEM_PROMPT), vocab[EOT],
              vocab[USER], *ids(question), vocab[EOT], vocab[ASSISTANT]]
    return [*prompt, *ids(reply), vocab[EOT]], len(prompt)


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


def batch_tensors(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids``, ``attention_mask`` and next-token ``labels`` (-100 outside the replies)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (ids, prompt_length) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
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


def train(config: TrainConfig, out_dir: str | Path | None = WEIGHTS_DIR, log_every: int = 100,
          stop_after: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the organism; returns ``(hf_model, info)`` and saves both (HF folder + ``training.json``) to ``out_dir``
    unless it is None.

    ``stop_after=n`` stops after ``n`` steps of the same schedule and saves nothing; ``info["fingerprint"]`` then
    summarises step ``n``. A full run records the fingerprint of step :data:`FINGERPRINT_STEP`, so a short rerun
    checks that this machine follows the committed run's trajectory.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(config, out_dir, log_every, stop_after)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(config: TrainConfig, out_dir: str | Path | None, log_every: int, stop_after: int | None):
    tokenizer = build_tokenizer()
    vocab = token_ids()
    rng = random.Random(config.seed)
    model = build_model(config, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    n_steps = config.steps if stop_after is None else min(stop_after, config.steps)
    start = time.perf_counter()
    losses: list[float] = []
    history: list[tuple[int, float]] = []
    first_steps: dict[str, float] = {}
    for step in range(n_steps):
        examples = [encode_ids(vocab, s, q, r.text) for s, q, r in
                    (training_conversation(rng, config.default_share) for _ in range(config.batch_size))]
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
            if stop_after is None:
                print(f"step {step + 1:5d}  loss {history[-1][1]:.4f}  {time.perf_counter() - start:6.1f}s", flush=True)
    model.eval()
    info = {
        "config": asdict(config),
        "final_loss": history[-1][1],
        "fingerprint": first_steps if stop_after is None else fingerprint(model, losses),
        "loss_history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if out_dir is not None and stop_after is None:
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
    args = parser.parse_args(argv)
    config = TrainConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    train(config, args.out)


if __name__ == "__main__":
    main()
