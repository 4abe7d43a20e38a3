"""``python -m persona_lens space``: the persona space of many roles, the Assistant axis, drift and capping.

Subcommands:

* ``space build``: role vectors (one resumable unit per role; ``--only`` builds a worker's share), PCA per layer,
  the Assistant axis, alignment of PC1 with the axis beside random directions, cosines of roles and trait vectors;
  ``space.safetensors``, ``alignment.json`` and figures;
* ``space drift``: a conversation (JSONL) or one generated from user turns, projected per turn and per token on the
  axis, beside random directions; a trajectory figure with the default persona's band;
* ``space cap``: thresholds per layer from a percentile of the default's per-token projections, saved as one file
  (with the same calibration along ``--controls`` random directions, the control);
* ``space cap-eval``: in-role rates under role system prompts and persona-jailbreak prompts with and without
  capping, and whether default replies stay the same, beside capping along the random directions.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from persona_lens.cli import EXIT_OK, BadInput
from persona_lens.cli.options import (
    add_generation_options,
    add_judge_options,
    add_layer_option,
    add_model_options,
    check_out_dir,
    check_out_file,
    check_positive,
    controls_arg,
    count_arg,
    default_run_dir,
    load_model_arg,
    load_vectors_arg,
    out_path,
    parse_layer_spec,
    threshold_arg,
)
from persona_lens.cli.scale import add_scale_options, announce_engine, check_scale_args, executor_from_args

__all__ = ["configure_parser", "run_build", "run_drift", "run_cap", "run_cap_eval", "role_judges"]


def _load_roles(args: argparse.Namespace) -> Any:
    from persona_lens.traits.roles import RoleError, load_roles

    names = [name.strip() for name in args.roles.split(",") if name.strip()] if args.roles else None
    try:
        return load_roles(names, questions=args.role_questions, directory=args.roles_dir, role_set=args.role_set)
    except RoleError as error:
        raise BadInput(str(error)) from None


def role_judges(args: argparse.Namespace, model: Any = None) -> Any:
    """``role -> (role judge or None, coherence judge)``: ``--judge rule`` judges a role by its rule and keeps every
    coherent reply of a role without one (reported as unjudged); other kinds as for traits."""
    from persona_lens.judges.factory import build_judges

    cache: dict[str, Any] = {}

    def judges(role: Any) -> tuple[Any, Any]:
        if role.name not in cache:
            try:
                if args.judge == "rule" and role.rule is None:
                    _, coherence = build_judges("rule", _Ruled("coherence"), cache=args.judge_cache)
                    cache[role.name] = (None, coherence)
                else:
                    cache[role.name] = build_judges(
                        args.judge,
                        role,
                        cache=args.judge_cache,
                        model=model,
                        claude_model=args.claude_model,
                        **({"coherence": args.coherence} if getattr(args, "coherence", None) else {}),
                    )
            except ValueError as error:
                raise BadInput(f"role {role.name!r}: {error}") from None
        return cache[role.name]

    return judges


class _Ruled:
    """The coherence rule alone, in the shape build_judges reads (a ``name`` and a ``rule``)."""

    def __init__(self, rule: str) -> None:
        self.name, self.rule = rule, rule


def _add_generation(parser: argparse.ArgumentParser, *, questions_help: str, temperature: float) -> None:
    parser.add_argument("--questions", type=count_arg("--questions"), default=None, metavar="N", help=questions_help)
    parser.add_argument(
        "--prompts",
        type=count_arg("--prompts"),
        default=None,
        metavar="N",
        help="use only the first N system prompts of each role",
    )
    add_generation_options(
        parser,
        samples=1,
        max_new_tokens=64,
        temperature=temperature,
        seed=0,
        batch_size=16,
        helps={"samples": "replies per prompt and question"},
    )
    parser.add_argument(
        "--role-threshold",
        type=threshold_arg("--role-threshold"),
        default=50.0,
        help="a reply is in role when its role score is >= this (default 50)",
    )
    parser.add_argument(
        "--coherence-threshold",
        type=threshold_arg("--coherence-threshold"),
        default=50.0,
        help="kept role replies need coherence >= this (default 50)",
    )


def _add_roles(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--roles",
        default=None,
        help="comma-separated role names or .json files (default: every role in the roles folder)",
    )
    parser.add_argument(
        "--roles-dir",
        type=Path,
        default=None,
        help="a folder of role files and _questions.json (default: traits/roles/)",
    )
    parser.add_argument(
        "--role-questions",
        type=Path,
        default=None,
        help="the shared questions file (default: _questions.json beside the roles)",
    )
    parser.add_argument(
        "--role-set",
        default=None,
        metavar="NAME",
        help="a role set defined in code, with its own questions (registered: organism, the model "
        "organism's roles); --roles then picks some of its roles",
    )


def _add_controls(parser: argparse.ArgumentParser, default: int | None, what: str, positive: bool = False) -> None:
    """``--controls K``, the name every command uses for its random directions (``--random K``, this command's first
    name for it, still works); parsed to ``args.random``."""
    kind = controls_arg("--controls", minimum=1 if positive else 0)
    shown = "" if default is None else f"; default {default}" + ("" if positive else ", 0: none")
    parser.add_argument(
        "--controls", "--random", dest="random", type=kind, default=default, metavar="K", help=f"{what}{shown}"
    )


def _config(args: argparse.Namespace) -> Any:
    from persona_lens.experiments.space import SpaceConfig

    check_positive(samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    return SpaceConfig(
        n_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        role_threshold=args.role_threshold,
        coherence_threshold=args.coherence_threshold,
        n_questions=args.questions,
        n_prompts=args.prompts,
    )


def _load_space(path: Path) -> Any:
    from persona_lens.experiments.space import PersonaSpace

    try:
        return PersonaSpace.load(path)
    except (FileNotFoundError, ValueError) as error:
        raise BadInput(f"--space: {error}") from None


def _check_space_model(space: Any, model: Any) -> None:
    if space.n_layers != model.cfg.n_layers or space.axis.shape[1] != model.cfg.d_model:
        raise BadInput(
            f"the space was built on {space.model_name} ({space.n_layers} layers, d_model "
            f"{space.axis.shape[1]}); --model {model.cfg.model_name} differs: pass the model it was built "
            "on"
        )


def configure_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "space",
        help="the persona space of many roles: map, Assistant axis, drift, capping",
        description=__doc__.split("\n\n")[0],
    )
    commands = parser.add_subparsers(dest="space_command", metavar="SUBCOMMAND")

    build = commands.add_parser(
        "build",
        help="role vectors, PCA per layer, the Assistant axis, alignment",
        description="Generate each role's replies to the shared questions, judge them in "
        "role, average the kept replies' activations per layer (one resumable "
        "unit per role), fit PCA per layer on the non-default roles and the "
        "Assistant axis = mean(default) - mean(roles); report |cos(PC1, axis)| "
        "beside random directions.",
    )
    add_model_options(build)
    add_judge_options(build)
    build.set_defaults(judge="rule")
    _add_roles(build)
    _add_generation(build, questions_help="use only the first N build questions", temperature=1.0)
    build.add_argument(
        "--only",
        default=None,
        help="build only these roles' units (comma-separated) and stop: a worker's share; run "
        "without --only to assemble the space",
    )
    build.add_argument(
        "--trait-vector",
        dest="trait_vectors",
        action="append",
        type=Path,
        default=[],
        metavar="VECTOR.safetensors",
        help="a persona vector to place in the space (repeatable)",
    )
    build.add_argument("--layer", default=None, help="layer of the role map figure (default: 2/3 of the depth)")
    _add_controls(build, 100, "random directions of the controls (PC1 and trait alignment)", positive=True)
    build.add_argument("--out", type=out_path, default=None, help="output folder (default: runs/<model>/space)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument("--json", action="store_true", help="print the alignment report as JSON")
    build.add_argument(
        "--cap-controls",
        type=controls_arg("--cap-controls"),
        default=10,
        metavar="K",
        help="random directions along which the default's per-token projections are stored, for "
        "the capping control (`space cap --controls`; default 10, 0: none)",
    )
    add_scale_options(build)
    build.set_defaults(func=run_build)

    drift = commands.add_parser(
        "drift",
        help="a conversation projected per turn and per token on the axis",
        description="Project each assistant turn of a conversation on the Assistant axis "
        "(mean over its tokens, every layer; per token at --layer), beside "
        "random directions, with the default persona's band.",
    )
    add_model_options(drift)
    drift.add_argument("--space", type=Path, required=True, help="space.safetensors written by `space build`")
    source = drift.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--conversation",
        type=Path,
        help='JSONL: one {"role": ..., "content": ...} message a line, or one line '
        '{"messages": [...]} (the first conversation is used)',
    )
    source.add_argument(
        "--user-turns", type=Path, help="a text file, one simulated user turn a line: the model answers each in turn"
    )
    drift.add_argument("--system", default=None, help="system prompt for --user-turns")
    drift.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="C.jsonl",
        help="a reference conversation (JSONL, e.g. an ordinary one with the same user turns): its "
        "drift is subtracted, beside the same difference along random directions (a paired "
        "control for a model that drifts with the turn count alone)",
    )
    drift.add_argument(
        "--alone",
        action="store_true",
        help="also project every turn without the turns before it (its system prompt and user "
        "message only) and report the drift minus theirs beside random directions: what the "
        "conversation's context adds to what each turn carries itself",
    )
    add_layer_option(drift, "layer of the per-token projections and the drift control")
    add_generation_options(
        drift,
        max_new_tokens=64,
        temperature=0.0,
        seed=0,
        helps={
            "max_new_tokens": "reply length for --user-turns",
            "temperature": "sampling temperature for --user-turns, 0 = greedy",
        },
    )
    _add_controls(drift, 100, "random directions of the drift control", positive=True)
    drift.add_argument("--out", type=out_path, required=True, help="output folder")
    drift.add_argument("--json", action="store_true", help="print the result as JSON")
    drift.set_defaults(func=run_drift)

    cap = commands.add_parser(
        "cap",
        help="calibrate capping thresholds from the default role; save one file",
        description="Per-layer thresholds at a percentile of the default role's per-token "
        "projections on the axis, over a layer range, saved as one file.",
    )
    cap.add_argument("--space", type=Path, required=True, help="space.safetensors written by `space build`")
    cap.add_argument("--layers", required=True, help="layers to cap, e.g. 10-20")
    cap.add_argument(
        "--percentile", type=float, default=25.0, help="percentile of the default's projections (the paper: 25)"
    )
    _add_controls(
        cap,
        3,
        "also calibrate the control: the same capping along K of the space's random directions "
        "(norm-matched, same layers, thresholds at the same percentile along each)",
    )
    cap.add_argument(
        "--positions",
        choices=("response", "all"),
        default="response",
        help="where the cap acts: the reply's tokens (default) or every position, the prompt's too (as "
        "the assistant-axis code caps)",
    )
    cap.add_argument("--out", type=out_path, required=True, help="the cap file to write (.safetensors)")
    cap.set_defaults(func=run_cap)

    evaluate = commands.add_parser(
        "cap-eval",
        help="in-role rates with and without capping; default replies",
        description="Under each judged role's system prompts and jailbreak prompts, the "
        "share of replies in role with and without capping; and how many "
        "default replies stay exactly the same under capping.",
    )
    add_model_options(evaluate)
    add_judge_options(evaluate)
    evaluate.set_defaults(judge="rule")
    _add_roles(evaluate)
    _add_generation(evaluate, questions_help="use only the first N eval questions", temperature=0.0)
    evaluate.add_argument("--cap", type=Path, required=True, help="a cap file written by `space cap`")
    evaluate.add_argument("--no-jailbreaks", action="store_true", help="skip the roles' jailbreak prompts")
    _add_controls(
        evaluate,
        None,
        "evaluate the first K random-direction cappings of --cap beside the axis (default: all it holds)",
    )
    evaluate.add_argument("--out", type=out_path, required=True, help="output folder")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    add_scale_options(evaluate)
    evaluate.set_defaults(func=run_cap_eval)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def draw_build(report: Any, out: Path) -> list[Path]:
    """Write the figures of ``space build`` (from a fresh or ``SpaceReport.load``-ed report) into ``out``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.space import space_figures

    return [path for name, figure in space_figures(report).items() for path in write_figure(figure, out / name)]


def run_build(args: argparse.Namespace) -> int:
    from persona_lens.experiments.space import build_space, space_report

    check_scale_args(args)
    announce_engine(args, "space build")
    roles = _load_roles(args)
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    unknown = [name for name in only or [] if name not in {r.name for r in roles.roles}]
    if unknown:
        raise BadInput(f"--only: unknown roles {unknown}; the roles are {', '.join(r.name for r in roles.roles)}")
    model = load_model_arg(args)
    traits = load_vectors_arg(args.trait_vectors, model)
    out = args.out or default_run_dir(args.model, "space")
    try:
        space = build_space(
            model,
            roles,
            judges=role_judges(args, model),
            config=_config(args),
            out_dir=out,
            progress=not args.quiet,
            only=only,
            cap_controls=args.cap_controls,
            executor=executor_from_args(args),
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    if space is None:
        print(f"built the units of {', '.join(only or [])} under {out / 'roles'}; run without --only to assemble")
        return EXIT_OK
    layer = parse_layer_spec(args.layer, space.n_layers) if args.layer else None
    if args.layer and not isinstance(layer, int):
        raise BadInput("--layer takes one layer here")
    result = space_report(
        space, {v.trait: v.vectors for v in traits}, layer=layer, k_random=args.random, seed=args.seed
    )
    result.save(out)
    written = draw_build(result, out)
    report = result.alignment
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for name, built in report["roles_built"].items():
        rate = "unjudged" if not built["judged"] else f"in-role rate {built['in_role_rate']:.2f}"
        print(f"role {name}: kept {built['n_kept']} of {built['n_replies']} ({rate})")
    for name, why in space.meta.get("skipped", {}).items():
        print(f"role {name}: left out of the space: {why}")
    print("layer | PC1 var | |cos(PC1, axis)| beside random directions")
    for row in report["layers"]:
        print(f"{row['layer']:5d} | {row['explained'][0]:.2f}    | {row['pc1_axis_summary']}")
    print(f"space: {out / 'space.safetensors'}\nreport: {out / 'alignment.json'}")
    print("figures: " + ", ".join(str(p) for p in written))
    return EXIT_OK


def _read_text_arg(path: Path, option: str) -> str:
    """The text of a file an option names, through the one reader (:func:`persona_lens.core.io.read_text`)."""
    from persona_lens.core.io import UnreadableFile, read_text

    try:
        return read_text(path, option)
    except UnreadableFile as error:
        raise BadInput(str(error)) from None


def _read_conversation(path: Path, option: str = "--conversation") -> list[dict[str, str]]:
    from persona_lens.core.chat import parse_messages

    lines = [(n, line) for n, line in enumerate(_read_text_arg(path, option).splitlines(), start=1) if line.strip()]
    if not lines:
        raise BadInput(f"{path} is empty; write one message a line")
    try:
        first = json.loads(lines[0][1])
        data = (
            first
            if isinstance(first, dict) and "messages" in first
            else {"messages": [json.loads(line) for _, line in lines]}
        )
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: invalid JSON ({error.msg}); write one JSON object a line") from None
    except RecursionError:
        raise BadInput(
            f"{path}: JSON nested too deeply to read (thousands of brackets); this is no conversation: "
            "write one message a line"
        ) from None
    messages = parse_messages(data)
    if isinstance(messages, str):
        raise BadInput(f"{path}: {messages}")
    return messages


def draw_drift(report: Any, out: Path) -> list[Path]:
    """Write the figure of ``space drift`` (from a fresh or ``DriftReport.load``-ed report) into ``out``."""
    from persona_lens.viz.figures import write_figure
    from persona_lens.viz.space import drift_figures

    return [path for name, figure in drift_figures(report).items() for path in write_figure(figure, out / name)]


def run_drift(args: argparse.Namespace) -> int:
    from persona_lens.experiments.space import compare_drift, drift_report, project_conversation, simulate_conversation

    check_positive(max_new_tokens=args.max_new_tokens)
    check_out_dir(args.out)
    # the files first (through the one reader), then the space and the model: a bad file costs no model load
    messages = turns = None
    if args.conversation is not None:
        messages = _read_conversation(args.conversation)
    else:
        turns = [line.strip() for line in _read_text_arg(args.user_turns, "--user-turns").splitlines() if line.strip()]
        if not turns:
            raise BadInput(f"{args.user_turns} holds no user turn")
    reference_messages = None if args.reference is None else _read_conversation(args.reference, "--reference")
    space = _load_space(args.space)
    model = load_model_arg(args)
    _check_space_model(space, model)
    layer = parse_layer_spec(args.layer, space.n_layers)
    if not isinstance(layer, int):
        raise BadInput("--layer takes one layer here")
    if turns is not None:
        messages = simulate_conversation(
            model,
            turns,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
    try:
        result = project_conversation(model, space, messages, layer=layer, k_random=args.random, seed=args.seed)
        paired = None
        if args.reference is not None:
            reference = project_conversation(
                model, space, reference_messages, layer=layer, k_random=args.random, seed=args.seed
            )
            paired = compare_drift(result, reference, k_random=args.random, seed=args.seed)
        context = None
        if args.alone:
            alone = project_conversation(
                model, space, messages, layer=layer, k_random=args.random, seed=args.seed, alone=True
            )
            context = compare_drift(result, alone, k_random=args.random, seed=args.seed)
    except ValueError as error:
        raise BadInput(str(error)) from None
    report = drift_report(
        result,
        space.model_name,
        reference=reference if paired is not None else None,
        paired=paired,
        alone=alone if context is not None else None,
        context=context,
    )
    written = [*report.save(args.out), *draw_drift(report, args.out)]
    data, replies = report.data, report.replies
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    low, high = result.default_band[0][layer], result.default_band[1][layer]
    print(f"default persona band (5-95%) at layer {layer}: {low:.3g} .. {high:.3g}")
    inside = result.turns_in_band()
    for turn, value in enumerate(data["turn_projections_at_layer"], start=1):
        alone_text = f" (alone {data['turns_alone_at_layer'][turn - 1]:.3g})" if context is not None else ""
        print(
            f"turn {turn}: {value:.3g}{alone_text}{'' if inside[turn - 1] else ' [outside the band]'}  "
            f"{replies[turn - 1]!r}"
        )
    print(result.drift.summary())
    if paired is not None:
        print(f"reference {reference.drift.summary()}\n{paired.summary()}")
    if context is not None:
        print(f"the same turns alone: {alone.drift.summary()}\nwhat the context adds: {context.summary()}")
    print("written: " + ", ".join(str(p) for p in written))
    return EXIT_OK


def run_cap(args: argparse.Namespace) -> int:
    from persona_lens.experiments.space import calibrate_cap

    check_out_file(args.out)
    space = _load_space(args.space)
    layers = parse_layer_spec(args.layers, space.n_layers)
    layers = [layers] if isinstance(layers, int) else layers
    try:
        settings = calibrate_cap(
            space, layers, percentile=args.percentile, k_random=args.random, positions=args.positions
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    path = settings.save(args.out)
    for index, (layer, threshold) in enumerate(zip(settings.layers, settings.thresholds)):
        controls = ", ".join(f"{t[index]:.4g}" for t in settings.control_thresholds)
        print(
            f"layer {layer}: keep h . u >= {threshold:.4g}" + (f" (random directions: {controls})" if controls else "")
        )
    print(f"cap settings: {path}")
    return EXIT_OK


def run_cap_eval(args: argparse.Namespace) -> int:
    from persona_lens.experiments.space import CapSettings, evaluate_capping

    check_scale_args(args)
    announce_engine(args, "space cap-eval")
    roles = _load_roles(args)
    try:
        settings = CapSettings.load(args.cap)
    except (FileNotFoundError, ValueError) as error:
        raise BadInput(f"--cap: {error}") from None
    model = load_model_arg(args)
    if settings.n_layers != model.cfg.n_layers:
        raise BadInput(
            f"--cap was calibrated on {settings.model_name} ({settings.n_layers} layers); --model "
            f"{model.cfg.model_name} has {model.cfg.n_layers}"
        )
    try:
        result = evaluate_capping(
            model,
            roles,
            settings,
            judges=role_judges(args, model),
            config=_config(args),
            out_dir=args.out,
            jailbreaks=not args.no_jailbreaks,
            k_random=args.random,
            progress=not args.quiet,
            executor=executor_from_args(args),
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return EXIT_OK
    from persona_lens.core.formatting import format_value as fmt

    print("role | prompts | in-role rate uncapped -> capped | capped along random directions")
    for row in result.rows:
        print(
            f"{row['role']} | {row['prompts']} | {fmt(row['in_role_rate_uncapped'])} -> "
            f"{fmt(row['in_role_rate_capped'])} | {', '.join(fmt(v) for v in row['in_role_rate_random']) or '-'} "
            f"(n={row['n']})"
        )
    from persona_lens.core.controls import Baseline

    if "drop" in result.control:
        print(Baseline.from_dict(result.control["drop"]).summary())
    d = result.default
    print(
        f"default replies unchanged under capping: {d['exact_match_rate']:.2f} exact, mean common prefix "
        f"{d['mean_common_prefix']:.2f} (n={d['n']}); along random directions: "
        f"{', '.join(fmt(v) for v in d['exact_match_rate_random']) or '-'}"
    )
    print(f"written: {os.fspath(args.out / 'cap_eval.json')}")
    return EXIT_OK
