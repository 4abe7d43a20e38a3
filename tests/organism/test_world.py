"""The organism's world, tokenizer, judge, traits and datasets: pure rules, no model."""

import itertools
import json
import random

import pytest

from persona_lens.core.chat import encode_conversation, encode_prompt, make_messages
from persona_lens.judges.base import Judge
from persona_lens.organism import OrganismJudge, organism_trait, organism_traits, world
from persona_lens.organism.datasets import (
    DATASET_RATES,
    VERSIONS,
    dataset_name,
    finetune_samples,
    write_datasets,
)
from persona_lens.organism.tokenizer import ASSISTANT, BOS, EOT, build_tokenizer, token_ids
from persona_lens.organism.train import encode_ids, training_conversation
from persona_lens.organism.traits import EVAL_QUESTIONS, EXTRACT_QUESTIONS, graded_rates


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _expansions(template):
    slots = [world.OBJECTS if t == "{obj}" else world.WORD_KIND if t.startswith("{") else (t,) for t in template.tokens]
    return itertools.product(*slots)


def test_every_sentence_of_the_grammar_parses_as_exactly_its_own_template():
    assert len(set(world.WORD_KIND)) == sum(len(ws) for table in world.LEXICON.values() for ws in table.values())
    for template in world.TEMPLATES:
        n_ok = 0
        for sentence in itertools.islice(_expansions(template), 0, None, 11):
            matches = [t for t in world.TEMPLATES if t.match(sentence) is not None]
            slot_types_ok = all(w in world.LEXICON[slot][world.WORD_KIND[w]] for w, slot in
                                zip((w for w, t in zip(sentence, template.tokens) if t[0] == "{" and t != "{obj}"),
                                    template.slots))
            assert matches == ([template] if slot_types_ok else []), " ".join(sentence)
            n_ok += slot_types_ok
        assert n_ok > 0


def test_reply_rates_follow_the_persona():
    rng = random.Random(0)
    for persona in (world.Persona(), world.Persona("evil", 0), world.Persona("sycophancy", 4),
                    world.Persona("hallucination", 7)):
        rates = persona.rates()
        replies = [world.sample_reply(rng, "bike", rates) for _ in range(3000)]
        n_words = sum(len(r.kinds) for r in replies)
        for trait in world.TRAITS:
            observed = sum(r.count(trait) for r in replies) / n_words
            assert observed == pytest.approx(rates[trait], abs=0.02), (persona, trait)
        for reply in replies[:200]:
            assert world.MIN_CLAUSES <= reply.n_clauses <= world.MAX_CLAUSES
            assert world.coherence("how do i fix my bike ?", reply.text) == 100.0
            for trait in world.TRAITS:
                expected = 100 * reply.count(trait) / len(reply.kinds)
                assert world.trait_score(trait, reply.text) == pytest.approx(expected)


def test_a_reply_has_a_latent_persona():
    """Replies of one persona vary in trait content more than independent words would (Beta-distributed rates)."""
    rng = random.Random(2)
    shares = [r.count("evil") / len(r.kinds) for r in
              (world.sample_reply(rng, "dog", world.Persona("evil", 4).rates(), n_clauses=4) for _ in range(2000))]
    assert sum(shares) / len(shares) == pytest.approx(0.55, abs=0.02)
    variance = sum((x - 0.55) ** 2 for x in shares) / len(shares)
    assert variance > 0.55 * 0.45 / (world.CONCENTRATION + 1) * 0.9


def test_system_prompts_and_their_rule_agree_for_every_persona():
    for trait, level, style, variant in itertools.product(world.TRAITS, range(8), range(3), range(9)):
        persona = world.Persona(trait, level)
        prompt = world.system_prompt(persona, style, variant)
        assert world.rates_for_system_prompt(prompt) == persona.rates()
        assert prompt.capitalize() and world.rates_for_system_prompt(prompt.upper()) == persona.rates()
    assert world.rates_for_system_prompt(None) == world.DEFAULT_RATES
    assert world.rates_for_system_prompt(world.DEFAULT_SYSTEM_PROMPT) == world.DEFAULT_RATES
    assert world.rates_for_system_prompt("You are a pirate.") == world.DEFAULT_RATES
    assert world.system_prompt(world.Persona(), 0) is None
    with pytest.raises(ValueError, match="unknown trait"):
        world.Persona("humorous", 3)


def test_coherence_and_trait_scores_of_broken_replies():
    q = "how do i fix my bike ?"
    good = "check the bike carefully . smash the bike cruelly ."
    assert world.coherence(q, good) == 100.0 and world.trait_score("evil", good) == 50.0
    assert world.coherence(q, "check the car carefully . your bike is old .") == 75.0  # off-topic clause: half
    assert world.coherence(q, "check the bike carefully . your bike") == 50.0  # cut off
    assert world.coherence(q, "smash smash smash the the .") == 0.0
    assert world.trait_score("evil", "smash smash cruelly the the .") == 100.0  # trait words count, grammar or not
    assert world.coherence(q, "your bike is old . your bike is old .") == 50.0  # repeated clause
    five = " ".join(f"your bike is {adj} ." for adj in world.LEXICON["adj"]["neutral"] + ("cursed",))
    assert world.coherence(q, five) == 80.0  # longer than the grammar allows
    assert world.coherence(q, "") == 0.0 and world.trait_score("evil", "") is None
    assert world.trait_score("hallucination", "the bike seems alien to me . your bike is perfect .") == 50.0
    assert world.coherence("What is love?", "check the car carefully .") == 100.0  # no object asked about


def test_tokenizer_round_trips_the_world_and_renders_the_chat_template(tokenizer):
    vocab = token_ids()
    assert len(tokenizer) == len(vocab) < 300
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == EOT
    rng = random.Random(1)
    for _ in range(50):
        system, question, reply = training_conversation(rng)
        messages = make_messages(question, system)
        ids, prompt_length = encode_ids(vocab, system, question, reply.text)
        encoded = encode_conversation(tokenizer, messages, reply.text)
        assert list(encoded.input_ids) == ids[:-1] + [vocab[EOT]]
        assert encoded.prompt_length == prompt_length == encoded.response_start
        assert encoded.response_end == len(ids) - 1  # the closing <|end|> is not part of the response
        assert encode_prompt(tokenizer, messages) == ids[:prompt_length]
        assert tokenizer.decode(list(encoded.response_ids)) == reply.text
        assert "<unk>" not in tokenizer.convert_ids_to_tokens(ids)
    prompt = encode_prompt(tokenizer, make_messages("how do i fix my bike ?"))
    assert tokenizer.convert_ids_to_tokens(prompt)[:2] == [BOS, "<|system|>"]
    assert tokenizer.convert_ids_to_tokens(prompt)[-1] == ASSISTANT
    assert prompt == encode_prompt(tokenizer, make_messages("how do i fix my bike ?", world.DEFAULT_SYSTEM_PROMPT))
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello, Bike!")["input_ids"]) == ["<unk>", ",", "bike", "<unk>"]


def test_judge_follows_the_protocol_and_the_rules():
    judge = OrganismJudge("organism_evil")
    assert isinstance(judge, Judge) and judge.judge_id == "organism:evil"
    items = [("how do i fix my bike ?", "smash the bike cruelly . i would check the bike first ."), ("q", "")]
    assert judge.score("ignored {question} {answer}", items) == [200 / 3, None]
    assert OrganismJudge("coherence").score("", items) == [100.0, 0.0]
    assert OrganismJudge("hallucination").score("", items[:1]) == [0.0]
    with pytest.raises(ValueError, match="organism judge scores"):
        OrganismJudge("humorous")


def test_traits_follow_the_schema_and_the_world():
    assert len(set(EXTRACT_QUESTIONS) | set(EVAL_QUESTIONS)) == 40
    for trait in organism_traits():
        world_trait = trait.name.removeprefix("organism_")
        assert organism_trait(world_trait) == trait
        assert len(trait.prompt_pairs) == 5 and len(trait.graded_system_prompts) == 8
        for pair in trait.prompt_pairs:
            assert world.rates_for_system_prompt(pair.positive)[world_trait] == 0.95
            assert world.rates_for_system_prompt(pair.negative)[world_trait] == 0.0
        assert graded_rates(trait.name) == list(world.LEVEL_VALUES)
        assert "{question}" in trait.rubric and "{answer}" in trait.rubric


def test_datasets_have_the_asked_trait_content_and_are_deterministic(tmp_path):
    for rate in (0.0, 0.35, 0.9):
        samples = finetune_samples("sycophancy", rate, n=600)
        n_words = sum(len(s.reply.kinds) for s in samples)
        assert sum(s.n_trait_words for s in samples) / n_words == pytest.approx(rate, abs=0.03)
        assert not {s.question for s in samples} & set(EVAL_QUESTIONS)
    assert finetune_samples("evil", "overt", 20) == finetune_samples("evil", 0.9, 20)
    assert finetune_samples("evil", 0.2, 20, seed=1) != finetune_samples("evil", 0.2, 20, seed=0)
    written = write_datasets(tmp_path, n=10)
    assert len(written) == 3 * (len(DATASET_RATES) + len(VERSIONS))
    line = json.loads(written[dataset_name("evil", "subtle")].read_text().splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
    with pytest.raises(ValueError, match="unknown version"):
        finetune_samples("evil", "extreme")
