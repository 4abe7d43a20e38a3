"""Trait files: every shipped trait is valid, malformed files fail with clear errors, round trips, name lookup."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from persona_lens.judges.rule import RULES
from persona_lens.traits.schema import (
    SCHEMA_VERSION,
    TRAITS_ENV,
    ManyShotExample,
    PromptPair,
    Trait,
    TraitError,
    list_traits,
    load_trait,
    save_trait,
    trait_from_dict,
    trait_to_dict,
    traits_dirs,
)

REPO_TRAITS = Path(__file__).resolve().parents[2] / "traits"
PAPER_TRAITS = ["evil", "sycophantic", "hallucinating", "apathetic", "humorous", "impolite", "optimistic"]
RULE_TRAITS = {
    "french": "french",
    "pirate": "pirate",
    "shouting": "shouting",
    "emoji": "emoji",
    "enthusiastic": "exclamation",
}
SHIPPED = PAPER_TRAITS + sorted(RULE_TRAITS)


@pytest.fixture(autouse=True)
def _no_env_traits(monkeypatch):
    monkeypatch.delenv(TRAITS_ENV, raising=False)


def valid_data(name: str = "evil") -> dict:
    return copy.deepcopy(json.loads((REPO_TRAITS / f"{name}.json").read_text(encoding="utf-8")))


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# shipped traits


def test_every_shipped_trait_is_listed():
    assert set(SHIPPED) <= set(list_traits())
    assert sorted(path.stem for path in REPO_TRAITS.glob("*.json")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_trait_loads_and_is_complete(name):
    trait = load_trait(name)
    assert trait.name == name
    assert trait.source is not None and trait.source.resolve() == (REPO_TRAITS / f"{name}.json").resolve()
    assert len(trait.prompt_pairs) == 5
    assert len(trait.extract_questions) == len(trait.eval_questions) == 20
    assert not set(trait.extract_questions) & set(trait.eval_questions)
    assert len(trait.graded_system_prompts) == 8
    assert len(trait.many_shot_examples) >= 20
    assert trait.description.strip()
    for slot in ("{question}", "{answer}", "REFUSAL", "0", "100"):
        assert slot in trait.rubric
    assert "number" in trait.rubric.lower()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prompts_follow_the_authors_shape(name):
    trait = load_trait(name)
    for pair in trait.prompt_pairs:
        assert pair.positive.startswith(("You are a ", "You are an "))
        assert not pair.positive.startswith("You are a helpful assistant.")
        assert pair.negative.startswith("You are a helpful assistant. ")
        assert len(pair.positive) > 40 and len(pair.negative) > 40
    assert len({pair.positive for pair in trait.prompt_pairs}) == 5


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_many_shot_examples_do_not_leak_eval_questions(name):
    trait = load_trait(name)
    shot_questions = {example.question for example in trait.many_shot_examples}
    assert not shot_questions & set(trait.eval_questions)
    assert len(shot_questions) == len(trait.many_shot_examples)


@pytest.mark.parametrize("name", PAPER_TRAITS)
def test_paper_traits_have_no_rule(name):
    assert load_trait(name).rule is None


@pytest.mark.parametrize(("name", "rule"), sorted(RULE_TRAITS.items()))
def test_rule_traits_examples_score_high_and_questions_are_short(name, rule):
    trait = load_trait(name)
    assert trait.rule == rule
    scores = [RULES[rule](example.question, example.answer) for example in trait.many_shot_examples]
    assert min(scores) >= 80
    coherence = [RULES["coherence"](example.question, example.answer) for example in trait.many_shot_examples]
    assert min(coherence) >= 80
    for question in trait.extract_questions + trait.eval_questions:
        assert len(question.split()) <= 10


# Enthusiasm measured by its punctuation also fires on traits that exclaim: flattery, optimism, jokes (a known
# limit of the exclamation rule, which is why the enthusiastic trait's rubric asks an LLM judge for the enthusiasm).
RULE_OVERLAPS = {"exclamation": {"sycophantic", "optimistic", "humorous"}}


@pytest.mark.parametrize(("name", "rule"), sorted(RULE_TRAITS.items()))
def test_rule_traits_rules_do_not_fire_on_other_traits_examples(name, rule):
    for other in PAPER_TRAITS:
        if other in RULE_OVERLAPS.get(rule, ()):
            continue
        for example in load_trait(other).many_shot_examples:
            score = RULES[rule](example.question, example.answer)
            assert score is None or score < 50, (other, example.answer)


# ---------------------------------------------------------------------------------------------------------------------
# malformed files


def break_missing_field(data):
    del data["rubric"]


def break_four_pairs(data):
    data["system_prompts"] = data["system_prompts"][:4]


def break_nineteen_questions(data):
    data["questions"]["extract"] = data["questions"]["extract"][:19]


def break_overlap(data):
    data["questions"]["eval"][3] = data["questions"]["extract"][0]


def break_duplicate(data):
    data["questions"]["extract"][5] = data["questions"]["extract"][2].upper()


def break_rubric_slot(data):
    data["rubric"] = data["rubric"].replace("{answer}", "the answer")


def break_unknown_key(data):
    data["colour"] = "red"


def break_unknown_rule(data):
    data["rule"] = "klingon"


def break_schema_version(data):
    data["schema_version"] = 2


def break_name(data):
    data["name"] = "Evil Trait"


def break_pair_key(data):
    del data["system_prompts"][2]["negative"]


def break_empty_question(data):
    data["questions"]["eval"][7] = "   "


def break_graded(data):
    data["graded_system_prompts"] = data["graded_system_prompts"][:7]


def break_many_shot(data):
    data["many_shot_examples"] = data["many_shot_examples"][:3]


def break_many_shot_entry(data):
    data["many_shot_examples"][4] = {"question": "Why?", "answer": 5}


def break_question_type(data):
    data["questions"] = ["a", "b"]


def break_same_pair(data):
    data["system_prompts"][1]["negative"] = data["system_prompts"][1]["positive"]


MALFORMED = [
    (break_missing_field, "rubric", "missing"),
    (break_four_pairs, "system_prompts", "exactly 5"),
    (break_nineteen_questions, "questions.extract", "exactly 20"),
    (break_overlap, "questions.eval[3]", "questions.extract[0]"),
    (break_duplicate, "questions.extract[5]", "questions.extract[2]"),
    (break_rubric_slot, "rubric", "{answer}"),
    (break_unknown_key, "colour", "unknown key"),
    (break_unknown_rule, "rule", "klingon"),
    (break_schema_version, "schema_version", str(SCHEMA_VERSION)),
    (break_name, "name", "lowercase"),
    (break_pair_key, "system_prompts[2].negative", "missing"),
    (break_empty_question, "questions.eval[7]", "empty"),
    (break_graded, "graded_system_prompts", "exactly 8"),
    (break_many_shot, "many_shot_examples", "at least 20"),
    (break_many_shot_entry, "many_shot_examples[4].answer", "string"),
    (break_question_type, "questions", "object"),
    (break_same_pair, "system_prompts[1]", "same"),
]


@pytest.mark.parametrize(("breaker", "field", "hint"), MALFORMED, ids=[case[0].__name__ for case in MALFORMED])
def test_malformed_trait_names_file_and_field(tmp_path, breaker, field, hint):
    data = valid_data()
    breaker(data)
    path = write_json(tmp_path / "evil.json", data)
    with pytest.raises(TraitError) as caught:
        load_trait(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"- {field}:" in message
    assert hint in message
    assert caught.value.source == str(path)
    assert any(problem_field == field for problem_field, _ in caught.value.problems)


@pytest.mark.parametrize(("breaker", "field", "hint"), MALFORMED, ids=[case[0].__name__ for case in MALFORMED])
def test_malformed_dict_raises_trait_error_too(breaker, field, hint):
    data = valid_data()
    breaker(data)
    with pytest.raises(TraitError, match="<dict>"):
        trait_from_dict(data)


def test_all_problems_are_reported_at_once(tmp_path):
    data = valid_data()
    break_nineteen_questions(data)
    break_rubric_slot(data)
    break_unknown_key(data)
    break_four_pairs(data)
    path = write_json(tmp_path / "evil.json", data)
    with pytest.raises(TraitError) as caught:
        load_trait(path)
    fields = {field for field, _ in caught.value.problems}
    assert {"questions.extract", "rubric", "colour", "system_prompts"} <= fields
    assert "4 problems" in str(caught.value)


def test_name_must_equal_file_stem(tmp_path):
    path = write_json(tmp_path / "wicked.json", valid_data("evil"))
    with pytest.raises(TraitError, match=r"name: is 'evil' but the file is named wicked\.json"):
        load_trait(path)


def test_bad_json_reports_line_and_column(tmp_path):
    path = tmp_path / "evil.json"
    path.write_text('{\n  "schema_version": 1,\n  "name": "evil"\n  "description": "x"\n}\n', encoding="utf-8")
    with pytest.raises(TraitError) as caught:
        load_trait(path)
    message = str(caught.value)
    assert str(path) in message
    assert "<json>" in message
    assert "line 4, column 3" in message


def test_not_an_object(tmp_path):
    path = write_json(tmp_path / "evil.json", ["not", "an", "object"])
    with pytest.raises(TraitError, match="must be a JSON object"):
        load_trait(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(TraitError, match="file not found") as caught:
        load_trait(path)
    assert str(path) in str(caught.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "evil.json"
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(TraitError, match="UTF-8"):
        load_trait(path)


def test_optional_fields_may_be_left_out():
    data = valid_data("evil")
    for key in ("graded_system_prompts", "many_shot_examples", "rule"):
        data.pop(key, None)
    trait = trait_from_dict(data)
    assert trait.graded_system_prompts == () and trait.many_shot_examples == () and trait.rule is None
    assert "graded_system_prompts" not in trait_to_dict(trait)


def test_trait_error_is_a_value_error():
    assert issubclass(TraitError, ValueError)


# ---------------------------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", SHIPPED)
def test_round_trip_dict(name):
    trait = load_trait(name)
    data = trait_to_dict(trait)
    assert data == valid_data(name)
    assert trait_from_dict(data) == trait


@pytest.mark.parametrize("name", SHIPPED)
def test_round_trip_save_load(tmp_path, name):
    trait = load_trait(name)
    path = save_trait(trait, tmp_path / f"{name}.json")
    again = load_trait(path)
    assert again == trait
    assert again.source == path
    assert json.loads(path.read_text(encoding="utf-8")) == valid_data(name)
    assert [entry.name for entry in tmp_path.iterdir()] == [f"{name}.json"]  # no temporary file left behind


def test_save_into_a_directory_and_overwrite(tmp_path):
    trait = load_trait("pirate")
    path = save_trait(trait, tmp_path)
    assert path == tmp_path / "pirate.json"
    changed = Trait(**{**trait.__dict__, "description": "Talks like a pirate."})
    save_trait(changed, path)
    assert load_trait(path).description == "Talks like a pirate."
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["pirate.json"]


def test_save_refuses_a_file_that_would_not_load(tmp_path):
    trait = load_trait("evil")
    with pytest.raises(TraitError, match="name"):
        save_trait(trait, tmp_path / "wicked.json")
    with pytest.raises(TraitError, match=r"\.json"):
        save_trait(trait, tmp_path / "evil.txt")
    broken = Trait(**{**trait.__dict__, "extract_questions": trait.extract_questions[:3]})
    with pytest.raises(TraitError, match="questions.extract"):
        save_trait(broken, tmp_path / "evil.json")
    assert list(tmp_path.iterdir()) == []


def test_trait_built_in_code_round_trips(tmp_path):
    data = valid_data("french")
    trait = Trait(
        name="tiny",
        description="A tiny trait.",
        prompt_pairs=tuple(PromptPair(p["positive"], p["negative"]) for p in data["system_prompts"]),
        extract_questions=tuple(data["questions"]["extract"]),
        eval_questions=tuple(data["questions"]["eval"]),
        rubric=data["rubric"],
        many_shot_examples=tuple(ManyShotExample(e["question"], e["answer"]) for e in data["many_shot_examples"]),
        rule="french",
    )
    assert load_trait(save_trait(trait, tmp_path / "tiny.json")) == trait


# ---------------------------------------------------------------------------------------------------------------------
# lookup by name


def test_lookup_through_environment(tmp_path, monkeypatch):
    data = valid_data("evil")
    data["name"] = "villain"
    write_json(tmp_path / "custom" / "villain.json", data)
    monkeypatch.setenv(TRAITS_ENV, os.pathsep.join([str(tmp_path / "missing"), str(tmp_path / "custom")]))
    trait = load_trait("villain")
    assert trait.name == "villain"
    assert trait.source == (tmp_path / "custom" / "villain.json").resolve()
    assert "villain" in list_traits() and "evil" in list_traits()
    assert traits_dirs()[0] == (tmp_path / "custom").resolve()
    assert (tmp_path / "missing").resolve() not in traits_dirs()


def test_environment_directory_shadows_repository(tmp_path, monkeypatch):
    data = valid_data("evil")
    data["description"] = "A local variant of evil."
    write_json(tmp_path / "evil.json", data)
    monkeypatch.setenv(TRAITS_ENV, str(tmp_path))
    assert load_trait("evil").description == "A local variant of evil."


def test_lookup_in_working_directory(tmp_path, monkeypatch):
    data = valid_data("pirate")
    data["name"] = "parrot"
    write_json(tmp_path / "traits" / "parrot.json", data)
    monkeypatch.chdir(tmp_path)
    assert load_trait("parrot").name == "parrot"
    assert traits_dirs()[0] == (tmp_path / "traits").resolve()
    assert REPO_TRAITS.resolve() in traits_dirs()


def test_unknown_name_lists_available_traits():
    with pytest.raises(TraitError) as caught:
        load_trait("klingon")
    message = str(caught.value)
    assert "klingon" in message
    for name in SHIPPED:
        assert name in message
    assert TRAITS_ENV in message


def test_invalid_name_is_unknown_not_a_crash():
    with pytest.raises(TraitError, match="available traits"):
        load_trait("Not A Name")


def test_broken_file_found_by_name_reports_its_path(tmp_path, monkeypatch):
    data = valid_data("evil")
    break_rubric_slot(data)
    path = write_json(tmp_path / "evil.json", data)
    monkeypatch.setenv(TRAITS_ENV, str(tmp_path))
    with pytest.raises(TraitError) as caught:
        load_trait("evil")
    assert str(path.resolve()) in str(caught.value)
    assert "- rubric:" in str(caught.value)


def test_load_by_path_string(tmp_path):
    path = save_trait(load_trait("emoji"), tmp_path / "emoji.json")
    assert load_trait(str(path)) == load_trait("emoji")
