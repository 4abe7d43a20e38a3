"""Rule judges: each rule on clear positive and negative examples, edge cases, and the RuleJudge wrapper."""

from __future__ import annotations

import pytest

from persona_lens.judges.base import Judge
from persona_lens.judges.rule import (
    RULES,
    RuleJudge,
    coherence_factors,
    count_emoji,
    known_word_share,
    loop_fraction,
    pirate_markers,
    score_coherence,
    score_emoji,
    score_french,
    score_pirate,
    score_shouting,
)

Q = "What do you like to eat for breakfast?"

PARAGRAPH = (
    "A good breakfast gives you energy for the morning. Many people like eggs with toast, while others prefer "
    "porridge with fruit and a little honey. If you are in a hurry, a banana and a yoghurt are quick options. "
    "Drinking a glass of water first thing also helps you feel awake, and a cup of tea or coffee is a pleasant "
    "ritual for most adults."
)


# ---------------------------------------------------------------------------------------------------------------------
# RuleJudge


def test_rules_registry():
    assert set(RULES) == {"french", "pirate", "shouting", "emoji", "exclamation", "coherence"}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_judge_id_and_protocol(rule):
    judge = RuleJudge(rule)
    assert judge.judge_id.split("@")[0] == f"rule:{rule}"
    assert isinstance(judge, Judge)
    assert rule in repr(judge)


def test_rule_judge_scores_each_item_in_order_and_ignores_the_rubric():
    judge = RuleJudge("shouting")
    items = [(Q, "I LIKE EGGS"), (Q, "i like eggs"), (Q, "1234")]
    first = judge.score("rubric with {question} and {answer}", items)
    second = judge.score("a completely different rubric", items)
    assert first == second == [100.0, 0.0, None]
    assert judge.score("r", []) == []


def test_rule_judge_rejects_unknown_rule():
    with pytest.raises(ValueError, match="unknown rule 'klingon'.*french"):
        RuleJudge("klingon")


ODD_ANSWERS = ["", " \n\t", "!!!", "1234", "é", "🙂", "a" * 5000, "the " * 300, "Ça va? Oui! ARR 🇫🇷 👨‍👩‍👧", None]


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("answer", ODD_ANSWERS, ids=range(len(ODD_ANSWERS)))
def test_rules_are_deterministic_and_in_range(rule, answer):
    score = RULES[rule](Q, answer)
    assert score == RULES[rule]("a different question", answer)
    assert score is None or (isinstance(score, float) and 0.0 <= score <= 100.0)


# ---------------------------------------------------------------------------------------------------------------------
# french


@pytest.mark.parametrize(
    "answer",
    [
        "Le matin, je mange du pain avec du beurre et je bois un café.",
        "J'aime les croissants. C'est très bon!",
        "Oui, bien sûr. Nous allons au marché le samedi.",
        "Mon animal préféré est le chat, parce qu'il est doux.",
    ],
)
def test_french_scores_french_high(answer):
    assert score_french(Q, answer) >= 90


@pytest.mark.parametrize(
    "answer",
    [
        "I like to eat eggs and toast for breakfast.",
        "My favourite colour is blue because it reminds me of the sea.",
        "It's a sunny day, so we are going to the park.",
        PARAGRAPH,
    ],
)
def test_french_scores_english_low(answer):
    assert score_french(Q, answer) <= 10


def test_french_mixed_answer_is_in_between():
    score = score_french(Q, "I like to eat breakfast. Je mange du pain le matin.")
    assert 30 <= score <= 70


def test_french_elisions_and_accents_count():
    assert score_french(Q, "l'été") == 100.0  # elided article + accented word
    assert score_french(Q, "J\u2019aime l\u2019eau") == 100.0  # typographic apostrophes
    assert score_french(Q, "Don't worry, it's fine.") == 0.0  # English contractions are not French elisions


@pytest.mark.parametrize("answer", ["", "   ", None, "12345 !!!", "Paris London Tokyo", "🙂🙂"])
def test_french_is_none_without_recognised_words(answer):
    assert score_french(Q, answer) is None


# ---------------------------------------------------------------------------------------------------------------------
# pirate


@pytest.mark.parametrize(
    "answer",
    [
        "Arr, matey! I eat eggs every mornin'.",
        "Ahoy! Ye'll find me eatin' biscuits on deck.",
        "Aye, me hearties, porridge it is!",
        "Shiver me timbers, ye scallywag, that be me breakfast!",
    ],
)
def test_pirate_two_or_more_markers_score_high(answer):
    assert len(pirate_markers(answer)[0]) >= 2
    assert score_pirate(Q, answer) >= 80


@pytest.mark.parametrize(
    "answer",
    [
        "I like to eat eggs and toast for breakfast.",
        "Give me the salt, please. My favourite food is pasta.",
        "Tell me about your day; I had a hearty breakfast at home.",
        PARAGRAPH,
        "",
        None,
    ],
)
def test_pirate_plain_english_scores_zero(answer):
    assert score_pirate(Q, answer) == 0.0


def test_pirate_one_marker_is_moderate_and_repeats_count_once():
    one = score_pirate(Q, "Arr, I like eggs.")
    assert 50 <= one <= 65
    assert score_pirate(Q, "Arr arr arr, I like eggs, arrr!") == pytest.approx(one)


def test_pirate_sea_vocabulary_alone_stays_below_half():
    answer = "The captain and the crew sailed the ship across the sea to find gold and treasure."
    assert 0 < score_pirate(Q, answer) < 50


def test_pirate_long_answer_needs_more_markers():
    short = score_pirate(Q, "Arr, matey, I like eggs.")
    long = score_pirate(Q, "Arr, matey. " + PARAGRAPH + " " + PARAGRAPH)
    assert long < short


def test_pirate_score_saturates():
    strong = "Arr! Ahoy, matey! Aye, me hearties, ye landlubbers be sailin' for booty and grog, yo ho!"
    assert score_pirate(Q, strong) >= 99


# ---------------------------------------------------------------------------------------------------------------------
# shouting


def test_shouting_all_caps_is_100():
    assert score_shouting(Q, "I LIKE EGGS AND TOAST!!!") == 100.0
    assert score_shouting(Q, "ÉTÉ À PARIS") == 100.0


def test_shouting_normal_text_is_low():
    assert score_shouting(Q, "Hello world") == pytest.approx(10.0)
    assert score_shouting(Q, PARAGRAPH) < 5


def test_shouting_half():
    assert score_shouting(Q, "ABcd") == 50.0


@pytest.mark.parametrize("answer", ["", None, "1234 !!!", "🙂", "你好"])
def test_shouting_is_none_without_cased_letters(answer):
    assert score_shouting(Q, answer) is None


# ---------------------------------------------------------------------------------------------------------------------
# emoji


@pytest.mark.parametrize(
    ("answer", "count"),
    [
        ("I like eggs.", 0),
        ("", 0),
        (None, 0),
        ("Price: 5€ → 10€ © ™ ✓ done", 0),  # arrows, currency and trademark signs are not emoji
        ("Eggs 🍳", 1),
        ("Love ❤️", 1),  # heart + variation selector
        ("Family 👨‍👩‍👧‍👦", 1),  # ZWJ sequence
        ("Wave 👋🏽", 1),  # skin tone modifier
        ("France 🇫🇷", 1),  # flag = two regional indicators
        ("Flags 🇫🇷🇩🇪", 2),
        ("Yum 🍕🍕 and ☕", 3),
        ("🎉🎉🎉🎉🎉", 5),
        ("Keycap 7️⃣ and ©️ in emoji style, © and ™ in text style", 2),
    ],
)
def test_count_emoji(answer, count):
    assert count_emoji(answer) == count


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ("I like eggs.", 0.0),
        ("I like eggs 🍳", 60.0),
        ("I like eggs 🍳 and toast 🍞", 85.0),
        ("I like eggs 🍳, toast 🍞 and coffee ☕", 100.0),
        ("Party 🎉🎉🎉🎉🎉🎉🎉", 100.0),
    ],
)
def test_emoji_score(answer, score):
    assert score_emoji(Q, answer) == score


# ---------------------------------------------------------------------------------------------------------------------
# coherence


@pytest.mark.parametrize(
    "answer",
    [
        "I like to eat eggs and toast for breakfast.",
        PARAGRAPH,
        "Je mange du pain avec du beurre et je bois un café au lait.",  # French
        "Arr, matey! I be eatin' salted fish and hard biscuits every mornin'!",  # pirate
        "I LIKE TO EAT EGGS AND TOAST FOR BREAKFAST!",  # capitals
        "I love pancakes 🥞 with strawberries 🍓 and a big cup of coffee ☕😋",  # emoji
        "1. Boil the water.\n2. Add the pasta.\n3. Cook it for ten minutes, then drain it.",
        "Very very very good question! I usually have porridge with honey in the morning.",
    ],
)
def test_coherence_normal_text_scores_high(answer):
    assert score_coherence(Q, answer) >= 80


@pytest.mark.parametrize(
    "answer",
    [
        "the the the the the the the the the the the the",
        "the " * 100,
        "I like eggs. " * 5,
        "I like to eat eggs and toast for breakfast every single day. " * 5,
        "breakfast is good breakfast is good breakfast is good breakfast is good breakfast is good",
        "nonononononononononononononononono",
        "cat dog cat dog cat dog cat dog cat dog cat dog",
    ],
)
def test_coherence_loops_score_low(answer):
    assert score_coherence(Q, answer) <= 20


@pytest.mark.parametrize("answer", ["-----------", "", "   ", None, "!!! ??? ...", "🙂🙂🙂", "7️⃣"])
def test_coherence_degenerate_text_is_zero(answer):
    assert score_coherence(Q, answer) == 0.0


def test_coherence_loop_after_a_good_start_is_penalised():
    answer = "I like to eat eggs for breakfast. And then and then and then and then and then and then and then"
    assert score_coherence(Q, answer) < 50


def test_coherence_mostly_symbols_is_penalised():
    assert score_coherence(Q, "Eggs: ### *** @@@ %%% &&& $$$ ^^^ ~~~ +++") < 30


def test_coherence_very_short_answers_are_penalised():
    one_word, two_words = score_coherence(Q, "Eggs."), score_coherence(Q, "Eggs, toast.")
    full = score_coherence(Q, "I usually eat eggs and toast.")
    assert one_word < two_words < full == 100.0
    assert one_word == pytest.approx(40.0)


def test_coherence_factors_are_in_unit_range_and_multiply_to_score():
    for answer in [PARAGRAPH, "the " * 10, "-----", "Eggs."]:
        factors = coherence_factors(answer)
        assert set(factors) == {"length", "letters", "trigrams", "loops", "words"}
        assert all(0.0 <= value <= 1.0 for value in factors.values())
        product = 1.0
        for value in factors.values():
            product *= value
        assert score_coherence(Q, answer) == pytest.approx(100 * product)


def test_loop_fraction():
    assert loop_fraction("") == 0.0
    assert loop_fraction(PARAGRAPH.lower()) < 0.1
    assert loop_fraction("abc " * 10) == pytest.approx(1.0)
    assert loop_fraction("hello!!!") == 0.0  # loops under 10 characters are ignored
    assert 0.4 < loop_fraction("x" * 20 + "y" * 0 + " a normal tail here") < 0.6


def test_coherence_penalises_word_salad_but_not_pirate_or_french():
    """Over-steered SmolLM2 replies (word salad) score low; pirate speech, French and plain text do not."""
    salad = "Anenrelfaya wi lovei enjoyment? White servit's Grimlands innbroughtoncsa. Shudlin's finguas git seven"
    pirate = "Arr, me hearties! I be sailin' the seas with me crew, lookin' for treasure and a fine breakfast."
    french = "Bonjour ! Mon animal préféré est le chat, parce qu'il est très mignon et calme."
    plain = "I usually eat eggs and toast, and I watched the birds while cooking quickly."
    assert score_coherence(Q, salad) < 30
    for text in (pirate, french, plain):
        assert score_coherence(Q, text) >= 90, text


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("I love it! It's amazing! Best day ever!", 100.0),
        ("I like it. It is fine! It is good.", 100.0 * (1 / 3) / 0.5),
        ("I like it. It is fine. It is good.", 0.0),
        ("I like it and it is fine and", 0.0),  # no sentence end yet
        ("Wow, I love it!!! Is it really yours?! Yes, it is.", 100.0),  # runs of marks count once; "?!" exclaims
        ("Wow!!! Really?! Yes.", 0.0),  # interjections are not sentences (issue 13: not without real sentences)
        ("Yes! Carrot moon fish table run blue.", 0.0),  # issue 13: scored 100 under exclamation v1
    ],
)
def test_exclamation_scores_the_share_of_exclaiming_sentences(answer, expected):
    from persona_lens.judges.rule import score_exclamation

    assert score_exclamation(Q, answer) == pytest.approx(expected)


def test_coherence_counts_other_scripts_and_stray_letters_as_non_words():
    """Over-steered byte-level output: fragments of other scripts and runs of single letters are not words, while
    contractions, elisions and the one-letter words of English and French are."""
    assert known_word_share("I love the ocean שלום מה 你好世界 and פיצה") < 0.6
    assert score_coherence(Q, "F B A F B A B A C D F B A E") == 0.0
    for text in (
        "It's what I'd do, don't you think? We'll see, and you're right.",
        "J'aime l'eau, qu'il fait beau ! Il y a un chat à la maison.",
        "O captain, a ship! I see it.",
    ):
        assert known_word_share(text) == 1.0, text


def test_changed_rules_get_a_new_judge_id_so_caches_do_not_serve_old_scores():
    from persona_lens.judges.rule import RULE_VERSIONS

    assert RuleJudge("shouting").judge_id == "rule:shouting"
    assert RuleJudge("coherence").judge_id == f"rule:coherence@v{RULE_VERSIONS['coherence']}"


def test_pirate_needs_a_core_marker_not_dialect_sprinkled_into_salad():
    """Issue 13: word salad with "ye" and "o'" scored pirate 82 under v1; dialect alone stays below 50."""
    salad = "Barn ye blue horse lamp fish sky, o' the truck dig merry nor."
    assert score_pirate(Q, salad) < 50
    assert score_pirate(Q, "Arr, ye scallywag, I be eatin' fish for lunch.") >= 80


def test_pirate_is_a_density_one_greeting_does_not_make_a_long_reply_pirate():
    """Two markers in one sentence pass; the same two markers at the head of three plain sentences do not."""
    short = "Arr matey, I like a fish stew for lunch."
    long = short + " I also like bread with butter and a cup of tea. In the evening I read a book at home."
    assert score_pirate(Q, short) >= 80
    assert score_pirate(Q, long) < 50
    dense = (
        "Arr matey, I like a fish stew for lunch. Ahoy, me hearties, bread with grog it be! "
        "Aye, in the evenin' I read by the bilge, ye landlubber."
    )
    assert score_pirate(Q, dense) >= 80


@pytest.mark.parametrize("bad", [[("Hi?", None)], [("Hi?",)], ["Hi? Hello."], [(b"Hi?", "Hello.")]])
def test_a_judge_given_an_item_that_is_not_two_strings_names_it(bad):
    from persona_lens.judges import COHERENCE_RUBRIC, OfflineCoherenceJudge

    for judge in (RuleJudge("coherence"), OfflineCoherenceJudge(None)):  # None: the rules-only fit, no model
        with pytest.raises(TypeError, match="item 0 must be a \\(question, answer\\) pair of strings"):
            judge.score(COHERENCE_RUBRIC, bad)
