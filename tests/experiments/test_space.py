"""Persona space mechanics on planted data and tiny models: PCA and the axis recover planted directions, role units
resume, drift is the turn mean of the token projections, capping at the bottom of the default range changes
nothing and above it lifts every capped position to the threshold."""

import json

import numpy as np
import pytest
import torch

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import encode_conversation, make_messages
from persona_lens.core.controls import Baseline, random_directions
from persona_lens.core.hooks import RecordProjection, install_hooks
from persona_lens.core.layers import hook_name
from persona_lens.core.vectors import unit_rows
from persona_lens.experiments import space as sp
from persona_lens.traits.roles import role_from_dict

N_LAYERS, D = 3, 32


def _planted(seed=0, n_roles=8, noise=0.05):
    """Roles spread along one planted direction u (the default sits far on its + side), plus small noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N_LAYERS + 1, D, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    base = torch.randn(N_LAYERS + 1, D, generator=g) * 3
    spread = torch.linspace(-2, 1, n_roles)
    roles = {f"r{i}": base + spread[i] * u + noise * torch.randn(N_LAYERS + 1, D, generator=g) for i in range(n_roles)}
    default = base + 4 * u + noise * torch.randn(6, N_LAYERS + 1, D, generator=g)
    return roles, default, u


def test_pca_and_axis_recover_a_planted_direction_beside_random():
    roles, default, u = _planted()
    space = sp.fit_space(roles, default, model_name="planted")
    assert space.components.shape == (N_LAYERS + 1, 7, D) and space.roles == [f"r{i}" for i in range(8)]
    assert bool((space.explained[:, 0] > 0.9).all())
    assert bool(((space.components[:, 0] * u).sum(-1) > 0.99).all())  # PC1 = u, oriented towards the default
    report = sp.axis_alignment(space, traits={"planted": u, "noise": torch.randn(N_LAYERS + 1, D)}, k_random=50)
    for row in report["layers"]:
        assert row["pc1_axis"]["value"] > 0.99 and row["pc1_axis"]["beats_random"]
        assert row["pc1_axis"]["random_p95"] < 0.6
        assert row["traits"]["planted"]["cos_axis"] > 0.99
        assert row["roles"]["default"]["pc1"] > max(r["pc1"] for n, r in row["roles"].items() if n != "default")


def test_pc1_with_no_planted_structure_does_not_beat_random():
    """Isotropic role vectors: PC1 is some direction unrelated to the axis, within the random band."""
    g = torch.Generator().manual_seed(3)
    roles = {f"r{i}": torch.randn(N_LAYERS + 1, D, generator=g) for i in range(6)}
    default = torch.randn(4, N_LAYERS + 1, D, generator=g)
    report = sp.axis_alignment(sp.fit_space(roles, default), k_random=200)
    assert sum(row["pc1_axis"]["beats_random"] for row in report["layers"]) <= 2


def test_space_saves_and_loads_and_refuses_too_few_roles(tmp_path):
    roles, default, _ = _planted()
    space = sp.fit_space(roles, default, model_name="planted")
    space.token_quantiles = torch.zeros(N_LAYERS + 1, 101)
    loaded = sp.PersonaSpace.load(space.save(tmp_path / "space.safetensors"))
    assert loaded.roles == space.roles and torch.equal(loaded.axis, space.axis)
    assert torch.equal(loaded.token_quantiles, space.token_quantiles)
    with pytest.raises(ValueError, match="at least 2 roles"):
        sp.fit_space({"r0": roles["r0"], "default": default[0]}, default)
    with pytest.raises(ValueError, match="not a persona_lens cap file"):
        sp.CapSettings.load(tmp_path / "space.safetensors")


ROLE = role_from_dict(
    {
        "schema_version": 1,
        "name": "sailor",
        "description": "A sailor.",
        "default": True,
        "system_prompts": ["You are a sailor.", None],
        "rubric": "{question} {answer}",
    }
)


def test_role_unit_is_resumable_and_keeps_unjudged_replies(tiny_model, tmp_path):
    config = sp.SpaceConfig(max_new_tokens=6, n_samples=2, batch_size=4)
    first = sp.build_role_vector(tiny_model, ROLE, ["Hi?", "Why?"], judge=None, config=config, out_dir=tmp_path)
    assert first.n_replies == 8 and not first.judged and first.in_role_rate is None
    assert first.activations.shape == (first.n_kept, tiny_model.cfg.n_layers + 1, tiny_model.cfg.d_model)
    assert torch.allclose(first.mean, first.activations.mean(0))
    lines = (tmp_path / "roles/sailor/responses.jsonl").read_text().splitlines()
    again = sp.build_role_vector(tiny_model, ROLE, ["Hi?", "Why?"], judge=None, config=config, out_dir=tmp_path)
    assert torch.equal(again.mean, first.mean) and again.kept_keys == first.kept_keys
    assert (tmp_path / "roles/sailor/responses.jsonl").read_text().splitlines() == lines
    with pytest.raises(ValueError, match="other settings"):
        sp.build_role_vector(tiny_model, ROLE, ["Hi?"], judge=None, config=config, out_dir=tmp_path)


def test_build_space_leaves_out_a_role_the_model_does_not_play(tmp_path):
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.roles import load_roles
    from tests.conftest import load_cached

    model = load_cached("tiny-llama")
    roles = load_roles(directory=_roles_dir(tmp_path))  # default, pirate (rule), sage, poet

    def judges(role):  # pirate judged, and no reply reaches the threshold of 101
        return (RuleJudge("coherence") if role.rule else None), None

    config = sp.SpaceConfig(max_new_tokens=4, role_threshold=101)
    space = sp.build_space(model, roles, judges=judges, config=config, out_dir=tmp_path / "s")
    assert space.roles == ["poet", "sage"] and "no reply was kept" in space.meta["skipped"]["pirate"]
    assert space.token_quantiles.shape == (model.cfg.n_layers + 1, 101)
    with pytest.raises(sp.RoleNotPlayed, match="pirate"):
        sp.build_space(model, roles, judges=judges, config=config, out_dir=tmp_path / "s", skip_unplayed=False)


def _default_conversations(model):
    pairs = [
        ("Hi?", "Hello there, friend."),
        ("How are you?", "Fine, thanks for asking."),
        ("Tell me a fact.", "Water boils at 100 degrees."),
    ]
    return [encode_conversation(model.tokenizer, make_messages(q), a) for q, a in pairs]


def _tiny_space(model, conversations):
    g = torch.Generator().manual_seed(0)
    acts = collect_activations(model, conversations, reductions=("response",), progress=False).get("response")
    shape = (model.cfg.n_layers + 1, model.cfg.d_model)
    roles = {f"r{i}": acts.mean(0) + torch.randn(shape, generator=g) for i in range(4)}
    space = sp.fit_space(roles, acts, model_name=model.cfg.model_name)
    space.token_quantiles = sp.default_token_quantiles(model, space, conversations, batch_size=8)
    return space


def test_token_quantiles_match_per_token_projections_read_by_record_projection(tiny_model):
    """One hook per layer projecting on all directions at once, over left-padded batches, gives the quantiles of the
    per-token projections that RecordProjection reads one direction and one layer at a time."""
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    units = torch.stack([space.axis_unit(), unit_rows(sp.cap_control_directions(space, 1)[0])])
    quantiles = sp._token_quantiles(tiny_model, units, conversations, batch_size=2)  # a padded batch and a single
    assert quantiles.shape == (2, tiny_model.cfg.n_layers + 1, 101)
    for m in range(2):
        for layer in range(1, tiny_model.cfg.n_layers + 1):
            tokens = sp._token_projections(tiny_model, conversations, units[m, layer], layer)
            expected = torch.quantile(torch.tensor([v for row in tokens for v in row]), torch.linspace(0, 1, 101))
            torch.testing.assert_close(quantiles[m, layer], expected, rtol=1e-4, atol=1e-4)


def test_cap_at_every_position_also_caps_the_prompt(tiny_model, tmp_path):
    """positions="all" (the assistant-axis code's capping) lifts prompt tokens too; "response" leaves them."""
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    layer = tiny_model.cfg.n_layers
    with pytest.raises(ValueError, match="positions must be"):
        sp.calibrate_cap(space, [layer], positions="everywhere")
    lows = {}
    for positions in ("response", "all"):
        settings = sp.CapSettings.load(
            sp.calibrate_cap(space, [layer], percentile=90.0, positions=positions).save(
                tmp_path / f"{positions}.safetensors"
            )
        )
        assert settings.positions == positions
        recorder = RecordProjection(settings.directions[0], "prompt")
        with (
            sp.apply_cap(tiny_model, settings),
            install_hooks(tiny_model, [(hook_name(layer, tiny_model.cfg.n_layers), recorder)]),
        ):
            collect_activations(tiny_model, conversations, reductions=("response",), progress=False)
        lows[positions] = float(torch.nan_to_num(recorder.projections(), nan=float("inf")).min())
        threshold = settings.thresholds[0]
    assert lows["all"] >= threshold - 1e-4 * max(1.0, abs(threshold)) > lows["response"]


def test_cap_at_the_bottom_of_the_default_range_changes_nothing(tiny_model, tmp_path):
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    layers = list(range(1, tiny_model.cfg.n_layers + 1))
    settings = sp.calibrate_cap(space, layers, percentile=0.0)
    settings = sp.CapSettings.load(settings.save(tmp_path / "cap.safetensors"))
    before = collect_activations(tiny_model, conversations, reductions=("response",), progress=False, batch_size=8)
    with sp.apply_cap(tiny_model, settings):
        after = collect_activations(tiny_model, conversations, reductions=("response",), progress=False, batch_size=8)
    assert torch.equal(before.get("response"), after.get("response"))


def test_cap_above_the_range_lifts_capped_positions_to_the_threshold(tiny_model):
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    layer = tiny_model.cfg.n_layers
    settings = sp.calibrate_cap(space, [layer], percentile=90.0)
    handle = sp.apply_cap(tiny_model, settings)
    try:
        tokens = sp._token_projections(tiny_model, conversations, settings.directions[0], layer)
    finally:
        handle.remove()
    assert not handle.active
    low = min(min(t) for t in tokens)
    assert low >= settings.thresholds[0] - 1e-4 * max(1.0, abs(settings.thresholds[0]))
    assert settings.thresholds[0] > float(space.token_quantiles[layer, 0])


def _built_space(model, tmp_path, **kw):
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.roles import load_roles

    roles = load_roles(directory=_roles_dir(tmp_path))

    def judges(role):
        return (RuleJudge(role.rule) if role.rule else None), RuleJudge("coherence")

    config = sp.SpaceConfig(max_new_tokens=6, n_samples=2, batch_size=4, role_threshold=0, coherence_threshold=0)
    return roles, judges, sp.build_space(model, roles, judges=judges, config=config, out_dir=tmp_path / "s", **kw)


def test_cap_controls_are_norm_matched_random_directions_calibrated_like_the_axis(tmp_path):
    """Each control direction has the axis's norm at every layer, and its thresholds are the same percentile of the
    default's per-token projections along it (recomputed here from the stored default replies)."""
    from persona_lens.core.io import JsonlRecords
    from tests.conftest import load_cached

    model = load_cached("tiny-llama")
    _, _, space = _built_space(model, tmp_path, cap_controls=4)
    assert space.control_quantiles.shape == (4, model.cfg.n_layers + 1, 101)
    directions = sp.cap_control_directions(space, 4)
    torch.testing.assert_close(directions.norm(dim=-1), space.axis.norm(dim=-1).expand(4, -1))
    loaded = sp.PersonaSpace.load(tmp_path / "s/space.safetensors")
    assert torch.equal(loaded.control_quantiles, space.control_quantiles)
    layers = [1, model.cfg.n_layers]
    settings = sp.calibrate_cap(loaded, layers, percentile=30.0, k_random=3)
    assert settings.n_controls == 3 and len(settings.control_thresholds) == 3
    stored = JsonlRecords(tmp_path / "s/roles/default/responses.jsonl").load()
    conversations = [sp._encode_record(model, stored[key]) for key in space.meta["roles"]["default"]["kept_keys"]]
    for j in range(3):
        control = settings.control(j)
        assert torch.allclose(
            control.directions, directions[j, layers] / directions[j, layers].norm(dim=-1, keepdim=True)
        )
        for index, layer in enumerate(layers):
            tokens = sp._token_projections(model, conversations, control.directions[index], layer)
            expected = float(np.percentile([v for t in tokens for v in t], 30.0))
            assert abs(control.thresholds[index] - expected) < 1e-3 * max(1.0, abs(expected))
    assert settings.control_thresholds != [settings.thresholds] * 3  # not the axis's thresholds
    again = sp.CapSettings.load(settings.save(tmp_path / "cap.safetensors"))
    assert again.control_thresholds == settings.control_thresholds
    assert torch.equal(again.control_directions, settings.control_directions)
    with pytest.raises(ValueError, match="k_random <= 4"):
        sp.calibrate_cap(space, layers, k_random=5)


def test_cap_eval_reports_random_direction_cappings_beside_the_axis(tmp_path):
    from tests.conftest import load_cached

    model = load_cached("tiny-llama")
    roles, judges, space = _built_space(model, tmp_path, cap_controls=2)
    settings = sp.calibrate_cap(space, [1, 2], percentile=50.0, k_random=2)
    config = sp.SpaceConfig(temperature=0.0, max_new_tokens=5, batch_size=4)
    result = sp.evaluate_capping(model, roles, settings, judges=judges, config=config, out_dir=tmp_path / "e")
    (system, jailbreak) = result.rows
    assert len(system["in_role_rate_random"]) == 2 and system["n_scored_random1"] == system["n_scored_uncapped"]
    assert result.control["drop"]["random_n"] == 2 and len(result.default["exact_match_rate_random"]) == 2
    pooled = result.control["pooled"]
    assert pooled["uncapped"]["scored"] == system["n_scored_uncapped"] + jailbreak["n_scored_uncapped"]
    drop = result.control["drop"]
    assert drop["value"] == pytest.approx(pooled["uncapped"]["rate"] - pooled["capped"]["rate"])
    assert sorted(drop["random"]) == sorted(pooled["uncapped"]["rate"] - pooled[f"random{j}"]["rate"] for j in range(2))
    again = sp.evaluate_capping(model, roles, settings, judges=judges, config=config, out_dir=tmp_path / "e")
    assert again.to_json() == result.to_json()  # resumed from the records
    none = sp.evaluate_capping(model, roles, settings, judges=judges, config=config, out_dir=tmp_path / "n", k_random=0)
    assert none.rows[0]["in_role_rate_random"] == [] and "drop" in none.control
    with pytest.raises(ValueError, match="hold 2 random directions"):
        sp.evaluate_capping(model, roles, settings, judges=judges, config=config, out_dir=tmp_path / "x", k_random=3)


def test_build_space_through_the_serial_executor_equals_the_plain_run(tmp_path):
    from persona_lens.experiments.executor import SerialExecutor
    from tests.conftest import load_cached

    model = load_cached("tiny-llama")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, _, plain = _built_space(model, tmp_path / "a")
    _, _, executed = _built_space(model, tmp_path / "b", executor=SerialExecutor())
    for name in ("role_vectors", "default_activations", "axis", "components", "token_quantiles", "control_quantiles"):
        assert torch.equal(getattr(plain, name), getattr(executed, name)), name


def test_drift_turn_values_are_token_means_and_come_with_a_random_control(tiny_model):
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    messages = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "Arr matey, now I be a pirate."},
    ]
    layer = 1
    result = sp.project_conversation(tiny_model, space, messages, layer=layer, k_random=20)
    assert result.turn_projections.shape == (2, tiny_model.cfg.n_layers + 1)
    for turn, tokens in enumerate(result.token_projections):
        assert abs(sum(tokens) / len(tokens) - float(result.turn_projections[turn, layer])) < 1e-3
    assert "".join(result.token_pieces[1]).strip() == "Arr matey, now I be a pirate."
    assert result.drift.to_dict()["random_n"] == 20
    json.dumps(result.to_json())
    other = sp.project_conversation(
        tiny_model,
        space,
        messages[:3] + [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Hello."}],
        layer=layer,
        k_random=20,
    )
    paired = sp.compare_drift(result, other, k_random=20, seed=5)
    assert paired.value == pytest.approx(result.drift.value - other.drift.value)
    randoms = random_directions(tiny_model.cfg.d_model, 20, seed=5 + layer)
    assert paired.random == pytest.approx((randoms @ (result.change - other.change)).tolist())
    assert sp.compare_drift(result, result, k_random=5).random == [0.0] * 5
    with pytest.raises(ValueError, match="at one layer"):
        sp.compare_drift(result, sp.project_conversation(tiny_model, space, messages, layer=2, k_random=5))
    with pytest.raises(ValueError, match="no assistant turn"):
        sp.project_conversation(tiny_model, space, messages[:2], layer=layer)


def test_turns_alone_are_each_turn_without_the_turns_before_it(tiny_model):
    """alone=True projects every turn after its system prompt and its own user message only: the first turn as in
    the conversation, a later one as the one-turn conversation it would be; the paired difference is then what the
    context adds."""
    conversations = _default_conversations(tiny_model)
    space = _tiny_space(tiny_model, conversations)
    system = {"role": "system", "content": "Be nice."}
    turns = [
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}],
        [{"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Arr matey, a pirate."}],
    ]
    messages = [system, *turns[0], *turns[1]]
    assert sp.turn_alone(messages[:4]) == [system, turns[1][0]] and sp.turn_alone(messages[1:2]) == [turns[0][0]]
    whole = sp.project_conversation(tiny_model, space, messages, layer=2, k_random=10)
    alone = sp.project_conversation(tiny_model, space, messages, layer=2, k_random=10, alone=True)
    second = sp.project_conversation(tiny_model, space, [system, *turns[1]], layer=2, k_random=10)
    assert alone.alone and not whole.alone and alone.messages == whole.messages
    torch.testing.assert_close(alone.turn_projections[0], whole.turn_projections[0])
    torch.testing.assert_close(alone.turn_projections[1], second.turn_projections[0])
    assert not torch.allclose(alone.turn_projections[1], whole.turn_projections[1])  # the context changes it
    context = sp.compare_drift(whole, alone, k_random=10)
    assert context.metric.startswith("drift - the same turns' drift alone")
    # drift = first - last, and the first turns agree: the difference is the last turn alone minus in context
    assert context.value == pytest.approx(float(alone.turn_projections[1, 2] - whole.turn_projections[1, 2]), abs=1e-5)
    low, high = whole.default_band[0][2], whole.default_band[1][2]
    assert whole.turns_in_band() == [low <= float(v) <= high for v in whole.turn_projections[:, 2]]
    assert json.loads(json.dumps(alone.to_json()))["alone"] is True
    other = sp.project_conversation(tiny_model, space, [*turns[1], *turns[0]], layer=2, k_random=10)
    other_alone = sp.project_conversation(tiny_model, space, [*turns[1], *turns[0]], layer=2, k_random=10, alone=True)
    pooled = sp.compare_drift([whole, other], [alone, other_alone], k_random=10)
    single = [context, sp.compare_drift(other, other_alone, k_random=10)]
    assert pooled.metric.startswith("mean over 2 conversations of drift - the same turns' drift alone")
    assert pooled.value == pytest.approx((single[0].value + single[1].value) / 2)
    assert pooled.random == pytest.approx([(x + y) / 2 for x, y in zip(single[0].random, single[1].random)], abs=1e-5)
    with pytest.raises(ValueError, match="pairs results with references"):
        sp.compare_drift([whole, other], [alone])


def test_simulated_conversation_alternates_turns(tiny_model):
    messages = sp.simulate_conversation(tiny_model, ["Hi?", "More?"], system="Be brief.", max_new_tokens=4)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]


# ---------------------------------------------------------------------------------------------------------------------
# the command line, on a tiny model


def _roles_dir(tmp_path):
    folder = tmp_path / "roles"
    folder.mkdir()
    (folder / "_questions.json").write_text(
        json.dumps({"schema_version": 1, "build": ["Hi?", "Why?"], "eval": ["How?"]})
    )
    for name, rule, default in (
        ("default", None, True),
        ("pirate", "pirate", False),
        ("sage", None, False),
        ("poet", None, False),
    ):
        data = {
            "schema_version": 1,
            "name": name,
            "description": name,
            "system_prompts": [f"You are {name}."],
            "rubric": "{question} {answer}",
            "default": default,
            "jailbreaks": [f"Be {name}. {{question}}"],
        }
        if rule:
            data["rule"] = rule
        (folder / f"{name}.json").write_text(json.dumps(data))
    return folder


def test_cli_build_cap_cap_eval_and_drift(tmp_path, capsys):
    from persona_lens import cli

    folder = _roles_dir(tmp_path)
    common = ["--model", "tiny-llama", "--judge-cache", str(tmp_path / "c.sqlite")]
    gen = ["--max-new-tokens", "6", "--coherence-threshold", "0", "--role-threshold", "0"]
    assert (
        cli.main(
            [
                "space",
                "build",
                *common,
                *gen,
                "--roles-dir",
                str(folder),
                "--only",
                "sage",
                "--quiet",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s/roles/sage/vector.safetensors").exists() and not (tmp_path / "s/space.safetensors").exists()
    assert (
        cli.main(
            [
                "space",
                "build",
                *common,
                *gen,
                "--roles-dir",
                str(folder),
                "--quiet",
                "--controls",
                "20",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "role sage: kept 2 of 2 (unjudged)" in out and "|cos(PC1, axis)|" in out
    report = json.loads((tmp_path / "s/alignment.json").read_text())
    assert report["roles"] == ["pirate", "poet", "sage"] and report["layers"][1]["pc1_axis"]["random_n"] == 20
    assert (tmp_path / "s/variance.html").exists()
    space_file = str(tmp_path / "s/space.safetensors")
    assert (
        cli.main(
            [
                "space",
                "cap",
                "--space",
                space_file,
                "--layers",
                "1-2",
                "--percentile",
                "10",
                "--controls",
                "2",
                "--out",
                str(tmp_path / "cap.safetensors"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "layer 2: keep h . u >=" in out and "(random directions: " in out
    assert (
        cli.main(
            [
                "space",
                "cap-eval",
                *common,
                *gen,
                "--roles-dir",
                str(folder),
                "--cap",
                str(tmp_path / "cap.safetensors"),
                "--quiet",
                "--json",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["default"]["role"] == "default"
    result = json.loads((tmp_path / "e/cap_eval.json").read_text())
    assert [(r["role"], r["prompts"]) for r in result["rows"]] == [("pirate", "system"), ("pirate", "jailbreak")]
    assert [len(r["in_role_rate_random"]) for r in result["rows"]] == [2, 2]
    assert result["control"]["drop"]["random_n"] == 2 and len(result["settings"]["control_thresholds"]) == 2
    assert (
        cli.main(
            [
                "space",
                "cap-eval",
                *common,
                *gen,
                "--roles-dir",
                str(folder),
                "--cap",
                str(tmp_path / "cap.safetensors"),
                "--quiet",
                "--random",
                "1",
                "--out",
                str(tmp_path / "e1"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "capped along random directions" in printed and "pooled in-role rate drop" in printed
    assert result["default"]["n"] == 1 and 0 <= result["default"]["exact_match_rate"] <= 1
    conversation = tmp_path / "conv.jsonl"
    conversation.write_text(
        "\n".join(
            json.dumps(m)
            for m in [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "More?"},
                {"role": "assistant", "content": "Arr, matey."},
            ]
        )
        + "\n"
    )
    assert (
        cli.main(
            [
                "space",
                "drift",
                "--model",
                "tiny-llama",
                "--space",
                space_file,
                "--conversation",
                str(conversation),
                "--layer",
                "2",
                "--controls",
                "10",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    drift = json.loads((tmp_path / "d/drift.json").read_text())
    assert len(drift["turn_projections_at_layer"]) == 2 and drift["drift"]["random_n"] == 10
    assert (
        cli.main(
            [
                "space",
                "drift",
                "--model",
                "tiny-llama",
                "--space",
                space_file,
                "--conversation",
                str(conversation),
                "--reference",
                str(conversation),
                "--layer",
                "2",
                "--random",
                "10",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert "drift - reference drift = 0 " in capsys.readouterr().out  # a conversation minus itself
    assert (
        cli.main(
            [
                "space",
                "drift",
                "--model",
                "tiny-llama",
                "--space",
                space_file,
                "--conversation",
                str(conversation),
                "--alone",
                "--layer",
                "2",
                "--controls",
                "10",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "the same turns alone: drift" in printed and "what the context adds: drift - the same turns'" in printed
    alone = json.loads((tmp_path / "a/drift.json").read_text())
    assert len(alone["turns_alone_at_layer"]) == 2 and alone["drift_minus_alone"]["random_n"] == 10
    assert alone["turns_alone_at_layer"][0] == pytest.approx(alone["turn_projections_at_layer"][0])
    paired = json.loads((tmp_path / "r/drift.json").read_text())["drift_minus_reference"]
    assert paired["value"] == 0 and paired["random"] == [0.0] * 10
    turns = tmp_path / "turns.txt"
    turns.write_text("Hi?\n\nTell me more.\nAnd then?\n")
    assert (
        cli.main(
            [
                "space",
                "drift",
                "--model",
                "tiny-llama",
                "--space",
                space_file,
                "--user-turns",
                str(turns),
                "--system",
                "Be brief.",
                "--max-new-tokens",
                "4",
                "--layer",
                "1",
                "--random",
                "5",
                "--out",
                str(tmp_path / "u"),
            ]
        )
        == 0
    )
    simulated = json.loads((tmp_path / "u/drift.json").read_text())
    assert [m["role"] for m in simulated["messages"]] == ["system"] + ["user", "assistant"] * 3
    assert (tmp_path / "u/drift.html").exists()


def test_cli_bad_input_exits_2_naming_the_fix(tmp_path, capsys):
    from persona_lens import cli

    folder = _roles_dir(tmp_path)
    assert (
        cli.main(
            [
                "space",
                "build",
                "--model",
                "tiny-llama",
                "--roles-dir",
                str(folder),
                "--only",
                "ghost",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "--only: unknown roles ['ghost']" in capsys.readouterr().err
    (folder / "poet.json").write_text("{")
    assert cli.main(["space", "build", "--model", "tiny-llama", "--roles-dir", str(folder)]) == 2
    assert "poet.json" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "space",
                "cap",
                "--space",
                str(tmp_path / "none.safetensors"),
                "--layers",
                "1",
                "--out",
                str(tmp_path / "c.safetensors"),
            ]
        )
        == 2
    )
    assert "no space file" in capsys.readouterr().err
    cap = ["cap", "--layers", "1"]  # cap counts 0 as "no control"; drift needs one
    drift = ["drift", "--model", "tiny-llama", "--conversation", "c.jsonl", "--layer", "1"]
    for command, value in ((cap, "-1"), (drift, "0")):
        assert cli.main(["space", *command, "--space", "s.safetensors", "--out", "o", "--controls", value]) == 2
        assert "--controls" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# SmolLM2 with the rule-measurable roles (slow; few questions: the figures of a larger run are in RESULTS.md)

SLOW_ROLES = ["default", "pirate", "french", "emoji", "enthusiastic"]
USER = ["What do you like to eat for breakfast?", "What do you do at the weekend?", "Tell me about the sea."]
ORDINARY = [
    "I usually like eggs and toast with a cup of coffee.",
    "At the weekend I read and walk in the park.",
    "The sea covers most of the planet and is home to many animals.",
]
INTO_PIRATE = [
    "I usually like eggs and toast with a cup of coffee.",
    "At the weekend I sail a little, matey.",
    "Arr, the sea be me home, matey! Ye never saw such waves, me hearties, yo ho ho!",
]
SLOW_LAYER = 20


def _rule_judges(role):
    from persona_lens.judges.rule import RuleJudge

    return (None if role.rule is None else RuleJudge(role.rule)), RuleJudge("coherence")


@pytest.fixture(scope="module")
def smol_space(tmp_path_factory):
    from persona_lens.core.models import SMOLLM2
    from persona_lens.traits.roles import load_roles
    from tests.conftest import load_cached

    model = load_cached(SMOLLM2)
    roles = load_roles(SLOW_ROLES)
    config = sp.SpaceConfig(n_questions=2, n_prompts=2, max_new_tokens=24, batch_size=32)
    out = tmp_path_factory.mktemp("smol_space")
    return model, roles, sp.build_space(model, roles, judges=_rule_judges, config=config, out_dir=out), out


def _conversation(replies):
    return [
        m for u, a in zip(USER, replies) for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})
    ]


@pytest.mark.slow
def test_smollm2_pc1_aligns_with_the_axis_beyond_random_directions(smol_space):
    _, _, space, _ = smol_space
    assert len(space.roles) >= 3, space.meta["skipped"]
    report = sp.axis_alignment(space, k_random=100)
    beats = [row["layer"] for row in report["layers"][1:] if row["pc1_axis"]["beats_random"]]
    assert len(beats) > space.n_layers // 2, [row["pc1_axis_summary"] for row in report["layers"]]


@pytest.mark.slow
def test_smollm2_drift_rises_into_a_role_and_not_in_an_ordinary_conversation(smol_space):
    model, _, space, _ = smol_space
    ordinary = sp.project_conversation(model, space, _conversation(ORDINARY), layer=SLOW_LAYER, k_random=100)
    pirate = sp.project_conversation(model, space, _conversation(INTO_PIRATE), layer=SLOW_LAYER, k_random=100)
    assert pirate.drift.beats_random and not ordinary.drift.beats_random, (
        pirate.drift.summary(),
        ordinary.drift.summary(),
    )
    assert pirate.drift.value > ordinary.drift.value


#: Default replies exactly unchanged under capping, at least (the organism's claim uses the same share).
DEFAULT_EXACT = 0.8


@pytest.mark.slow
def test_smollm2_capping_at_the_10th_percentile_lowers_in_role_rates_beyond_random_and_keeps_defaults(smol_space):
    """Capping layers 18-24 at the 10th percentile of the default's per-token projections (the percentile at which
    the larger benchmark kept 12 of 12 default replies exact, benchmarks/RESULTS.md), greedy, under every judged
    role's system prompts and jailbreak prompts: the pooled in-role rate falls by more than under the same capping
    along 3 random directions, and default replies stay exactly the same in at least DEFAULT_EXACT of cases.
    Measured on these settings before it was asserted: drop 0.156 (24/47 -> 17/48 in role; random cappings 0),
    default replies 5 of 6 exact (random cappings 5, 6, 5 of 6)."""
    model, roles, space, out = smol_space
    settings = sp.calibrate_cap(space, range(18, 25), percentile=10.0, k_random=3)
    config = sp.SpaceConfig(temperature=0.0, max_new_tokens=24, n_questions=3, n_prompts=2)
    result = sp.evaluate_capping(model, roles, settings, judges=_rule_judges, config=config, out_dir=out / "cap10")
    for row in result.rows:
        print(
            f"  {row['role']} ({row['prompts']}, n={row['n']}): {row['in_role_rate_uncapped']} -> "
            f"{row['in_role_rate_capped']}; random {row['in_role_rate_random']}"
        )
    drop = Baseline.from_dict(result.control["drop"])
    default = result.default
    print(
        f"  {drop.summary()}\n  default replies exact {default['exact_match_rate']:.3f} (n={default['n']}, common "
        f"prefix {default['mean_common_prefix']:.3f}); random cappings {default['exact_match_rate_random']}"
    )
    assert drop.beats_random, drop.summary()
    assert default["exact_match_rate"] >= DEFAULT_EXACT, default


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-01 with the density-based pirate rule v2: in-role rate "
    "0.4 uncapped and 0.4 capped over 10 greedy replies (layers 18-24, 25th percentile); the 21/40 -> "
    "7/40 drop in RESULTS.md was measured with the v1 rule",
)
def test_smollm2_capping_lowers_the_pirate_rate(smol_space):
    """Capping layers 18-24 at the 25th percentile (the paper's setting) under pirate's system prompts (greedy)."""
    model, roles, space, out = smol_space

    def pirate_only(role):
        return _rule_judges(role) if role.name == "pirate" else (None, None)

    settings = sp.calibrate_cap(space, range(18, 25), percentile=25.0)
    config = sp.SpaceConfig(temperature=0.0, max_new_tokens=24, n_questions=5, n_prompts=2)
    result = sp.evaluate_capping(
        model, roles, settings, judges=pirate_only, config=config, out_dir=out / "cap", jailbreaks=False
    )
    (row,) = result.rows
    print(json.dumps(result.to_json(), indent=1))
    assert row["in_role_rate_capped"] < row["in_role_rate_uncapped"], row
