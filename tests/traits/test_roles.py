"""Roles as data: the starter set loads, and bad files are refused naming the file, the field and the fix."""

import json

import pytest

from persona_lens.traits.roles import (
    RoleError,
    list_roles,
    load_role,
    load_roles,
    questions_from_dict,
    role_from_dict,
    role_to_dict,
    save_role,
)
from persona_lens.traits.schema import list_traits

RULED = {
    "pirate": "pirate",
    "french": "french",
    "shouting": "shouting",
    "enthusiastic": "exclamation",
    "emoji": "emoji",
}


def _role(**changes):
    data = {
        "schema_version": 1,
        "name": "sailor",
        "description": "A sailor.",
        "system_prompts": ["You are a sailor.", None],
        "rubric": "Score {question} {answer}.",
    }
    data.update(changes)
    return data


def test_starter_set_has_one_default_and_the_rule_roles():
    roles = load_roles()
    assert roles.default.name == "default"
    assert roles.default.system_prompts[0] is None  # the plainest default: no system prompt
    for name, rule in RULED.items():
        assert roles[name].rule == rule and roles[name].jailbreaks
    assert len(roles.questions.build) == 20 and len(roles.questions.eval) == 10
    assert not set(roles.questions.build) & set(roles.questions.eval)


def test_roles_are_not_listed_as_traits():
    assert "poet" in list_roles() and "poet" not in list_traits()
    assert "default" not in list_traits() and "_questions" not in list_roles()


def test_round_trip_and_save(tmp_path):
    role = role_from_dict(_role())
    assert role.system_prompts == ("You are a sailor.", None)
    path = save_role(role, tmp_path)
    assert path.name == "sailor.json" and load_role(path) == role
    assert role_from_dict(role_to_dict(role)) == role


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"name": "Sailor"}, "name", "lowercase"),
        ({"system_prompts": []}, "system_prompts", "non-empty"),
        ({"system_prompts": ["a", "a"]}, "system_prompts[1]", "repeats"),
        ({"rubric": "no slots"}, "rubric", "{question}"),
        ({"rule": "klingon"}, "rule", "use one of"),
        ({"default": "yes"}, "default", "true or false"),
        ({"jailbreaks": ["no slot here"]}, "jailbreaks[0]", "{question}"),
        ({"colour": "red"}, "colour", "unknown key"),
        ({"schema_version": 2}, "schema_version", "reads schema_version 1"),
    ],
)
def test_bad_role_names_field_and_fix(changes, field, fix):
    with pytest.raises(RoleError) as error:
        role_from_dict(_role(**changes), "roles/sailor.json")
    assert f"  - {field}: " in str(error.value) and fix in str(error.value)
    assert str(error.value).startswith("roles/sailor.json:")


def test_name_must_match_file_and_every_problem_is_listed(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(_role(rubric="x", description="")))
    with pytest.raises(RoleError) as error:
        load_role(path)
    message = str(error.value)
    assert "3 problems" in message and "other.json; make them equal" in message and "description" in message


def test_questions_must_be_disjoint_and_role_sets_need_one_default(tmp_path):
    with pytest.raises(RoleError, match=r"eval\[0\]: also appears as build\[0\]"):
        questions_from_dict({"schema_version": 1, "build": ["Hi?"], "eval": [" hi? "]})
    (tmp_path / "_questions.json").write_text(json.dumps({"schema_version": 1, "build": ["Hi?"], "eval": []}))
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_role(name=name)))
    with pytest.raises(RoleError, match="0 roles are marked"):
        load_roles(directory=tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(_role(name="a", default=True)))
    roles = load_roles(directory=tmp_path)
    assert roles.default.name == "a" and [r.name for r in roles.others] == ["b", "c"]


def test_a_registered_role_set_loads_by_name_and_picks_roles():
    from persona_lens.traits.roles import list_role_sets

    assert "organism" in list_role_sets()
    roles = load_roles(role_set="organism")
    assert roles.default.name == "organism_default" and len(roles.others) == 3
    assert roles.questions.build and not set(roles.questions.build) & set(roles.questions.eval)
    assert all(role.rule for role in roles.roles)  # every organism role is judged exactly, the default too
    picked = load_roles(["organism_default", "organism_villain", "organism_fabulist"], role_set="organism")
    assert [role.name for role in picked.others] == ["organism_villain", "organism_fabulist"]
    with pytest.raises(RoleError, match="ghost not in the role set 'organism'"):
        load_roles(["organism_default", "ghost"], role_set="organism")
    with pytest.raises(RoleError, match="no role set named 'nope'"):
        load_roles(role_set="nope")
    with pytest.raises(RoleError, match="1 non-default roles"):
        load_roles(["organism_default", "organism_villain"], role_set="organism")
    with pytest.raises(RoleError, match="not both"):
        load_roles(role_set="organism", directory="traits/roles")
