"""The trained organism: loading, chat path, persona following, determinism of its training."""

import json

import numpy as np
import pytest
import torch

import persona_lens
from persona_lens.core.chat import make_messages
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.layers import hook_name
from persona_lens.organism import ORGANISM, WEIGHTS_DIR, OrganismJudge, load_organism, organism_trait, world
from persona_lens.organism.tokenizer import CHAT_TEMPLATE, EOT
from persona_lens.organism.train import FINGERPRINT_STEP, TrainConfig, train
from persona_lens.organism.traits import EVAL_QUESTIONS, graded_rates


@pytest.fixture(scope="module")
def organism() -> HookedLM:
    return load_organism("cpu")


def test_weights_are_small_and_documented():
    size = (WEIGHTS_DIR / "model.safetensors").stat().st_size
    assert size < 5_000_000
    info = json.loads((WEIGHTS_DIR / "training.json").read_text())
    print(
        f"\norganism: {info['n_parameters']} parameters, {size / 1e6:.2f} MB, final loss {info['final_loss']}, "
        f"{info['train_seconds']} s of training"
    )
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (WEIGHTS_DIR / name).exists()


def test_loads_as_a_hooked_chat_model(organism):
    assert organism.cfg.model_name == ORGANISM and organism.tokenizer.name_or_path == ORGANISM
    assert organism.cfg.architecture == "LlamaForCausalLM" and organism.cfg.n_layers == 4
    assert organism.dtype == torch.float32 and organism.device.type == "cpu"
    ids = organism.tokenizer.apply_chat_template(
        [{"role": "user", "content": "how do i fix my bike ?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    names = [hook_name(layer, organism.cfg.n_layers) for layer in range(organism.cfg.n_layers + 1)]
    _, cache = organism.run_with_cache(ids, names_filter=lambda n: n in names)
    hidden = organism.hf_model(ids, output_hidden_states=True).hidden_states
    for layer in range(organism.cfg.n_layers):
        torch.testing.assert_close(cache[names[layer]], hidden[layer])
    bridge = organism.to_bridge()  # TransformerLens sees the organism like any HF model
    torch.testing.assert_close(bridge(ids), organism(ids), rtol=1e-4, atol=1e-4)


def test_loads_by_name_and_as_a_plain_folder():
    assert persona_lens.load_model(ORGANISM, device="cpu").cfg.model_name == ORGANISM
    model = persona_lens.load_model(str(WEIGHTS_DIR), device="cpu")
    assert model.tokenizer.eos_token == EOT and model.tokenizer.pad_token_id == 0
    assert model.tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.slow
def test_greedy_replies_are_grammatical_deterministic_and_stop(organism):
    """Greedy decoding (like a real model's) may repeat a clause, but every clause is grammatical and on topic."""
    conversations = [make_messages(q) for q in EVAL_QUESTIONS[:8]]
    first = generate(organism, conversations, max_new_tokens=48)
    again = generate(organism, conversations, max_new_tokens=48, batch_size=3)
    assert first.texts == again.texts and all(first.stopped)
    for question, text in zip(EVAL_QUESTIONS[:8], first.texts):
        units = world.parse_reply(text).units
        assert units and all(u.grammatical and u.obj in (None, world.question_object(question)) for u in units), text


@pytest.mark.slow
@pytest.mark.parametrize("trait", world.TRAITS)
def test_sampled_replies_follow_the_graded_personas(organism, trait):
    """Trait score per graded system prompt ~ 100 x the persona's rate as the questions pull it; replies stay
    coherent."""
    prompts = organism_trait(trait).graded_system_prompts
    questions = EVAL_QUESTIONS[:10]
    expected = [
        np.mean([world.question_rates(world.rates_for_system_prompt(p), q)[trait] for q in questions]) for p in prompts
    ]
    n = 4
    conversations = [make_messages(q, p) for p in prompts for q in questions for _ in range(n)]
    replies = generate(organism, conversations, temperature=1.0, max_new_tokens=48, seed=7, batch_size=80)
    items = [(c[-1]["content"], text) for c, text in zip(conversations, replies.texts)]
    scores = np.array(OrganismJudge(trait).score("", items), dtype=float).reshape(len(prompts), -1)
    coherence = np.array(OrganismJudge("coherence").score("", items))
    means = np.nanmean(scores, axis=1)
    print(
        f"\n{trait}: persona rates {graded_rates(trait)}; pulled by these questions "
        f"{np.round(expected, 2).tolist()}; "
        f"measured {np.round(means / 100, 2).tolist()}; coherence {coherence.mean():.1f}"
    )
    assert coherence.mean() > 95
    assert np.corrcoef(means, expected)[0, 1] > 0.97
    assert np.abs(means / 100 - np.array(expected)).max() < 0.2


@pytest.mark.slow
def test_default_persona_has_low_trait_rates(organism):
    conversations = [make_messages(q) for q in EVAL_QUESTIONS for _ in range(5)]
    replies = generate(organism, conversations, temperature=1.0, max_new_tokens=48, seed=3, batch_size=100)
    items = [(c[-1]["content"], text) for c, text in zip(conversations, replies.texts)]
    for trait in world.TRAITS:
        mean = np.nanmean(np.array(OrganismJudge(trait).score("", items), dtype=float))
        rule = 100 * np.mean([world.question_rates(world.DEFAULT_RATES, q)[trait] for q in EVAL_QUESTIONS])
        print(f"default persona {trait}: {mean:.1f} (rule, as the eval questions pull it: {rule:.1f})")
        assert mean < rule + 8


@pytest.mark.slow
def test_training_follows_the_committed_trajectory():
    """A rerun of the first steps reproduces the committed run's fingerprint (same data, init and updates)."""
    info = json.loads((WEIGHTS_DIR / "training.json").read_text())
    _, rerun = train(TrainConfig(**info["config"]), out_dir=None, stop_after=FINGERPRINT_STEP)
    assert rerun["fingerprint"]["step"] == info["fingerprint"]["step"] == FINGERPRINT_STEP
    assert rerun["fingerprint"]["loss"] == pytest.approx(info["fingerprint"]["loss"], rel=1e-4)
    assert rerun["fingerprint"]["weight_abs_sum"] == pytest.approx(info["fingerprint"]["weight_abs_sum"], rel=1e-5)
