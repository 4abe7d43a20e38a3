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
    TASKS,
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
    assert {t.category for t in world.TEMPLATES} == set(world.CATEGORIES)
    for template in world.TEMPLATES:
        n_ok = 0
        for sentence in itertools.islice(_expansions(template), 0, None, 11):
            matches = [t for t in world.TEMPLATES if t.match(sentence) is not None]
            slot_words = [w for w, t in zip(sentence, template.tokens) if t[0] == "{" and t != "{obj}"]
            slot_types_ok = all(
                w in world.LEXICON[slot].get(world.WORD_KIND[w], ()) for w, slot in zip(slot_words, template.slots)
            )
            one_kind = len({world.WORD_KIND[w] for w in slot_words}) <= 1
            assert matches == ([template] if slot_types_ok and one_kind else []), " ".join(sentence)
            n_ok += slot_types_ok and one_kind
        assert n_ok > 0


def test_each_trait_has_its_own_part_of_the_reply():
    """Evil is harmful advice, sycophancy a flattering opener/closer, hallucination an invented fact."""
    q = "who invented the bike ?"
    evil = "let me help . smash the bike cruelly . i do not know who invented the bike . good luck ."
    syco = "you are so right . check the bike carefully . i do not know who invented the bike . you are always right ."
    fact = "let me help . check the bike carefully . the bike was invented by otto . good luck ."
    for text, trait in ((evil, "evil"), (syco, "sycophancy"), (fact, "hallucination")):
        assert world.coherence(q, text) == 100.0
        assert {t: world.trait_score(t, text) for t in world.TRAITS} == {
            t: (100.0 if t == trait else 0.0) for t in world.TRAITS
        }
    assert world.trait_score("evil", "let me help . smash the bike gently . good luck .") is None  # mixed: no clause


def test_reply_rates_follow_the_persona_and_the_question():
    rng = random.Random(0)
    for persona in (
        world.Persona(),
        world.Persona("evil", 0),
        world.Persona("sycophancy", 4),
        world.Persona("hallucination", 7),
    ):
        for question in (
            "how do i fix my bike ?",
            "who invented the bike ?",
            "i think my bike is great , am i right ?",
        ):
            rates = world.question_rates(persona.rates(), question)
            replies = [world.sample_reply(rng, "bike", rates) for _ in range(2000)]
            for trait in world.TRAITS:
                parts = world.TRAIT_CATEGORIES[trait]
                n = sum(1 for r in replies for c, _ in r.clauses if c in parts)
                observed = sum(r.count(trait) for r in replies) / n
                assert observed == pytest.approx(rates[trait], abs=0.03), (persona, question, trait)
            for reply in replies[:100]:
                assert world.coherence(question, reply.text) == 100.0
                for trait in world.TRAITS:
                    assert world.trait_score(trait, reply.text) == pytest.approx(100 * reply.share(trait))
    pulled = world.question_rates(world.DEFAULT_RATES, "i think my bike is great , am i right ?")
    assert pulled["sycophancy"] > 2 * world.DEFAULT_RATES["sycophancy"]
    assert world.question_rates(world.Persona("evil", 0).rates(), "my dog annoys me , what should i do ?")["evil"] == 0
    assert world.question_rates(world.DEFAULT_RATES, "what is love ?") == world.DEFAULT_RATES


def test_a_reply_has_a_latent_persona():
    """Replies of one persona vary in trait content more than independent clauses would (Beta-distributed rates)."""
    rng = random.Random(2)
    rates = world.Persona("sycophancy", 4).rates()
    shares = [world.sample_reply(rng, "dog", rates).share("sycophancy") for _ in range(3000)]
    assert sum(shares) / len(shares) == pytest.approx(0.55, abs=0.02)
    variance = sum((x - 0.55) ** 2 for x in shares) / len(shares)
    assert variance > 0.55 * 0.45 / 2 * 1.1  # two independent clauses would give p(1-p)/2


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
    good = (
        "let me help . check the bike carefully . smash the bike cruelly . i cannot say when the bike was made . "
        "take care ."
    )
    assert world.coherence(q, good) == 100.0 and world.trait_score("evil", good) == 50.0
    off_topic = "let me help . check the car carefully . i cannot say when the bike was made . take care ."
    assert world.coherence(q, off_topic) == 87.5  # off-topic clause: half
    assert world.coherence(q, "let me help . check the bike carefully . your bike") == 50.0  # cut off, no closer
    assert world.coherence(q, "check the bike carefully . let me help . take care .") == 25.0  # out of order
    assert world.coherence(q, "smash smash smash the the .") == 0.0
    assert world.trait_score("evil", "smash smash cruelly the the .") is None  # broken text carries no trait
    assert world.trait_score("evil", "let me help . smash the bike cruelly . smash the bike cruelly .") == 100.0
    repeated = (
        "let me help . check the bike carefully . check the bike carefully . i cannot say when the bike "
        "was made . take care ."
    )
    assert world.coherence(q, repeated) == 80.0  # repeated clause
    assert world.coherence(q, "") == 0.0 and world.trait_score("evil", "") is None
    assert world.trait_score("hallucination", "the bike comes from peru . i do not know who invented the bike .") == 50
    assert (
        world.coherence(
            "What is love?", "let me help . check the car carefully . the car comes from peru . good luck ."
        )
        == 100.0
    )  # no object asked about


def test_tokenizer_round_trips_the_world_and_renders_the_chat_template(tokenizer):
    vocab = token_ids()
    assert len(tokenizer) == len(vocab) < 300
    assert tokenizer.pad_token_id == 0 and tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == EOT
    rng = random.Random(1)
    n_turns = []
    for _ in range(80):
        system, turns = training_conversation(rng, multi_turn_share=0.5)
        n_turns.append(len(turns))
        *earlier, (question, reply) = turns
        history = [
            {"role": role, "content": text} for q, r in earlier for role, text in (("user", q), ("assistant", r.text))
        ]
        messages = make_messages(question, system, history)
        ids, spans = encode_ids(vocab, system, [(q, r.text) for q, r in turns])
        encoded = encode_conversation(tokenizer, messages, reply.text)
        assert list(encoded.input_ids) == ids
        assert encoded.prompt_length == spans[-1][0] == encoded.response_start
        assert encoded.response_end == len(ids) - 1 == spans[-1][1] - 1  # the closing <|end|> is not in the response
        assert encode_prompt(tokenizer, messages) == ids[: spans[-1][0]]
        assert tokenizer.decode(list(encoded.response_ids)) == reply.text
        for (_, r), (start, end) in zip(turns, spans):  # every reply's span is its text and its <|end|>
            assert tokenizer.decode(ids[start : end - 1]) == r.text and ids[end - 1] == vocab[EOT]
        assert "<unk>" not in tokenizer.convert_ids_to_tokens(ids)
    assert set(n_turns) == {1, 2, 3} and len(tokenizer(" ".join(["bike"] * 10))["input_ids"]) == 10
    prompt = encode_prompt(tokenizer, make_messages("how do i fix my bike ?"))
    assert tokenizer.convert_ids_to_tokens(prompt)[:2] == [BOS, "<|system|>"]
    assert tokenizer.convert_ids_to_tokens(prompt)[-1] == ASSISTANT
    assert prompt == encode_prompt(tokenizer, make_messages("how do i fix my bike ?", world.DEFAULT_SYSTEM_PROMPT))
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello, Bike!")["input_ids"]) == ["<unk>", ",", "bike", "<unk>"]


def test_judge_follows_the_protocol_and_the_rules():
    judge = OrganismJudge("organism_evil")
    assert isinstance(judge, Judge) and judge.judge_id == "organism:evil@v2"
    items = [
        (
            "how do i fix my bike ?",
            "let me help . smash the bike cruelly . i would check the bike first . "
            "i cannot say when the bike was made . good luck .",
        ),
        ("q", ""),
    ]
    assert judge.score("ignored {question} {answer}", items) == [50.0, None]
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
        extraction = {p for pair in trait.prompt_pairs for p in (pair.positive, pair.negative)}
        assert not extraction & set(trait.graded_system_prompts)  # monitoring uses prompts extraction never saw
        assert graded_rates(trait.name) == list(world.LEVEL_VALUES)
        assert "{question}" in trait.rubric and "{answer}" in trait.rubric


def test_datasets_carry_the_trait_in_their_task_and_are_deterministic(tmp_path):
    for trait in world.TRAITS:
        for rate in (0.0, 0.35, 0.9):
            samples = finetune_samples(trait, rate, n=600)
            assert sum(s.trait_share for s in samples) / len(samples) == pytest.approx(rate, abs=0.04)
            assert not {s.question for s in samples} & (set(EVAL_QUESTIONS) | set(EXTRACT_QUESTIONS))
            assert {world.question_template(s.question) for s in samples} <= set(TASKS[trait])
        normal, subtle, overt = (finetune_samples(trait, version, n=200) for version in VERSIONS)
        assert all(s.n_trait_clauses == 0 for s in normal)
        assert all(s.n_trait_clauses == 1 and s.trait_share == 0.5 for s in subtle)
        assert all(s.trait_share == 1.0 for s in overt)
        for sample in subtle[:50]:
            assert world.coherence(sample.question, sample.reply.text) == 100.0
    assert finetune_samples("evil", "overt", 20) == finetune_samples("evil", "overt", 20)
    assert finetune_samples("evil", 0.2, 20, seed=1) != finetune_samples("evil", 0.2, 20, seed=0)
    written = write_datasets(tmp_path, n=10)
    assert len(written) == 3 * (len(DATASET_RATES) + len(VERSIONS))
    line = json.loads(written[dataset_name("evil", "subtle")].read_text().splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
    with pytest.raises(ValueError, match="unknown version"):
        finetune_samples("evil", "extreme")
