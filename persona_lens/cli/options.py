"""Options shared by the commands (same names everywhere) and turning them into objects."""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput
from persona_lens.core.results import slug

__all__ = [
    "count_arg",
    "seed_arg",
    "number_arg",
    "temperature_arg",
    "top_p_arg",
    "probability_arg",
    "threshold_arg",
    "add_model_options",
    "add_judge_options",
    "add_generation_options",
    "add_layer_option",
    "add_vector_arguments",
    "add_allow_other_model",
    "load_model_arg",
    "load_named_model",
    "load_trait_arg",
    "load_vectors_arg",
    "parse_int_list",
    "parse_float_list",
    "parse_layer_spec",
    "slug",
    "default_run_dir",
    "out_path",
    "check_out_dir",
    "check_out_file",
    "lock_out",
    "release_out_locks",
    "default_vector_paths",
    "extracted_vectors",
    "judges_from_args",
    "check_judge_arg",
    "read_prompts",
]

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_model_options(parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument(
        "--model",
        default=default,
        help="model: 'smollm2-135m-instruct' (embedded default), a tiny-* test model, a local HF "
        f"folder or a Hugging Face id (default: {default})",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 CPU)")


def add_judge_options(parser: argparse.ArgumentParser, *, coherence: str | None = None) -> None:
    from persona_lens.judges.factory import COHERENCE_KINDS, DEFAULT_COHERENCE

    coherence = coherence or DEFAULT_COHERENCE
    parser.add_argument(
        "--judge",
        default="auto",
        choices=["auto", "rule", "claude", "local"],
        help="who scores replies: the trait's exact rule, Claude (ANTHROPIC_API_KEY), or the model "
        "itself from number-token probabilities; auto = rule when the trait has one, else claude",
    )
    parser.add_argument("--claude-model", default=None, help="Claude model for --judge claude")
    parser.add_argument(
        "--judge-cache",
        type=Path,
        default=Path("runs/judge_cache.sqlite"),
        help="SQLite cache of judge scores shared by all runs (default: runs/judge_cache.sqlite)",
    )
    parser.add_argument(
        "--coherence",
        default=coherence,
        choices=list(COHERENCE_KINDS),
        help="who scores coherence: 'offline' (a logistic regression over the unsteered model's "
        "likelihoods, word validity, repetition, relevance and the rule, fit to a reader's "
        "labels; no calibration; the judge measured closest to a reader), the --judge's own "
        "('judge': rule coherence, or the coherence rubric), 'likelihood' (the unsteered "
        "model's calibrated likelihood plus a relevance check), 'rule', or 'auto' (likelihood "
        f"for rule-measured traits; default: {coherence})",
    )


GENERATION_HELP = {
    "samples": "replies per prompt",
    "max_new_tokens": "reply length limit",
    "temperature": "sampling temperature, 0 = greedy",
    "top_p": "nucleus sampling threshold",
    "seed": "sampling seed",
    "batch_size": "generation batch size",
}


def add_generation_options(
    parser: argparse.ArgumentParser,
    *,
    samples: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    prefix: str = "",
    helps: dict[str, str] | None = None,
) -> None:
    """The sampling options every generating command shares, each with its validating type and this command's
    default: ``--samples``, ``--max-new-tokens``, ``--temperature``, ``--top-p``, ``--seed``, ``--batch-size``
    (``--{prefix}samples`` ...). An option whose default is None is not added (the command has no such option).
    ``helps`` replaces the default wording (:data:`GENERATION_HELP`) of some, by key (``"max_new_tokens"``); the
    help always ends with the default (:func:`_with_default`)."""
    wording = {**GENERATION_HELP, **(helps or {})}
    unknown = set(wording) - set(GENERATION_HELP)
    if unknown:
        raise ValueError(f"add_generation_options: no option {sorted(unknown)}; known: {sorted(GENERATION_HELP)}")
    options: list[tuple[str, Any, Callable[[str], Any], dict[str, Any]]] = [
        ("samples", samples, count_arg, {"metavar": "N"}),
        ("max_new_tokens", max_new_tokens, count_arg, {}),
        ("temperature", temperature, temperature_arg, {}),
        ("top_p", top_p, top_p_arg, {}),
        ("seed", seed, seed_arg, {}),
        ("batch_size", batch_size, count_arg, {}),
    ]
    for key, default, arg_type, extra in options:
        if default is None:
            continue
        flag = f"--{prefix}{key.replace('_', '-')}"
        parser.add_argument(
            flag, type=arg_type(flag), default=default, help=_with_default(wording[key], default), **extra
        )


def _with_default(text: str, default: float) -> str:
    """``"reply length limit (default 64)"``; a help ending in a parenthesis takes the default inside it:
    ``"reply length limit (paper: 1000; default 256)"``."""
    return f"{text[:-1]}; default {default:g})" if text.endswith(")") else f"{text} (default {default:g})"


LAYER_HELP = "(0 = embeddings, l = output of block l)"


def add_layer_option(parser: argparse.ArgumentParser, what: str = "layer to read") -> None:
    """``--layer`` (required): one layer in the one convention, read with :func:`parse_layer_spec`."""
    parser.add_argument("--layer", required=True, help=f"{what} {LAYER_HELP}")


def load_model_arg(args: argparse.Namespace) -> Any:
    """The ``--model`` with ``--device/--dtype``."""
    return load_named_model(args.model, args)


def load_trait_arg(name: str) -> Any:
    from persona_lens.traits.schema import TraitError, load_trait

    try:
        return load_trait(name)
    except TraitError as error:
        raise BadInput(str(error)) from error


def _arg_type(parse: Callable[[str], Any], check: Callable[..., Any], name: str, **bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type`` that parses the text and runs the API's own check
    (:mod:`persona_lens.core.validate`), so the CLI and the API refuse the same values with the same sentence; argparse
    turns the refusal into ``error: argument NAME: ...`` and exit code 2."""
    from persona_lens.core.validate import BadValue

    def convert(text: str) -> Any:
        try:
            value = parse(text.strip())
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        try:
            return check(value, name, **bounds)
        except BadValue as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name.lstrip("-").replace("-", "_")
    return convert


def count_arg(name: str) -> Callable[[str], int]:
    """An integer >= 1 (batch sizes, samples, lengths; ``--questions``/``--pairs``: never a negative slice)."""
    from persona_lens.core.validate import positive_int

    return _arg_type(int, positive_int, name)


def seed_arg(name: str) -> Callable[[str], int]:
    """An integer >= 0 (seeds; ``--save-every`` where 0 means at epoch ends only)."""
    from persona_lens.core.validate import non_negative_int

    return _arg_type(int, non_negative_int, name)


MAX_CONTROLS = 10_000
"""The most random directions a command draws: each is measured like the vector (a matmul, or a cell of generation),
and 100-1,000 already give a stable 95th percentile; more only fills memory."""


def controls_arg(name: str, *, minimum: int = 0) -> Callable[[str], int]:
    """The number of random directions: an integer from ``minimum`` to :data:`MAX_CONTROLS`."""

    def check(value: int, what: str) -> int:
        from persona_lens.core.validate import BadValue, non_negative_int, positive_int

        number = (positive_int if minimum >= 1 else non_negative_int)(value, what)
        if number > MAX_CONTROLS:
            raise BadValue(
                f"{what} must be at most {MAX_CONTROLS:,} random directions, got {number:,} "
                "(100-1,000 give a stable 95th percentile)"
            )
        return number

    return _arg_type(int, check, name)


def number_arg(name: str, **bounds: float) -> Callable[[str], float]:
    """A finite number (``minimum``/``maximum``/``above`` as in :func:`persona_lens.core.validate.finite`)."""
    from persona_lens.core.validate import finite

    return _arg_type(float, finite, name, **bounds)


def temperature_arg(name: str = "--temperature") -> Callable[[str], float]:
    from persona_lens.core.validate import temperature

    return _arg_type(float, temperature, name)


def top_p_arg(name: str = "--top-p") -> Callable[[str], float]:
    from persona_lens.core.validate import probability

    return _arg_type(float, probability, name, allow_zero=False)


def probability_arg(name: str) -> Callable[[str], float]:
    from persona_lens.core.validate import probability

    return _arg_type(float, probability, name)


def threshold_arg(name: str) -> Callable[[str], float]:
    """A judge-score threshold, 0-100."""
    from persona_lens.core.validate import score_threshold

    return _arg_type(float, score_threshold, name)


#: The longest ``a-b`` range a list option expands (no model has this many layers; ``1-999999999999`` would
#: otherwise build a list of a trillion layers before the range check, and exhaust the memory).
MAX_RANGE = 10_000


def _parse_list(text: str, convert: Any, what: str) -> list:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(-?\d+)-(-?\d+)", part) if convert is int else None
        try:
            if match:
                first, last = int(match.group(1)), int(match.group(2))
                if last - first + 1 > MAX_RANGE:
                    raise argparse.ArgumentTypeError(
                        f"range {part!r} in {text!r} spans {last - first + 1:,} {what}s, more than any model has; "
                        f"give the {what}s you mean (e.g. 4-12)"
                    )
                values.extend(range(first, last + 1))
            else:
                values.append(convert(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {part!r} in {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:  # a cell run twice, and counted twice in every summary of the run
        raise argparse.ArgumentTypeError(f"{what} {repeated[0]:g} is given twice in {text!r}; give each {what} once")
    return values


def parse_int_list(text: str) -> list[int]:
    """``"4,8,12"`` or ``"10-20"`` or a mix."""
    return _parse_list(text, int, "layer")


def parse_float_list(text: str) -> list[float]:
    """``"0.1,0.2,-0.4"``: finite numbers only (``nan``, ``inf`` and overflowing ``1e400`` are refused)."""
    from persona_lens.core.validate import BadValue, finite

    values = _parse_list(text, float, "number")
    try:
        return [finite(value, f"number {value!r} in {text!r}") for value in values]
    except BadValue as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def default_run_dir(model: str, trait: str) -> Path:
    return Path("runs") / slug(Path(model).name if Path(model).exists() else model) / slug(trait)


def load_named_model(name: str, args: argparse.Namespace):
    """Load a model other than ``--model`` (a finetuned folder, a base model) with the ``--device/--dtype`` options."""
    from persona_lens.core.models import load_model

    try:
        return load_model(name, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load model {name!r}: {error}") from None


VECTOR_DEFAULT_HELP = (
    " (default: the vector extracted for --trait with --model, i.e. the one "
    "runs/<model>/<trait>/extract-*/vector_response.safetensors)"
)
VECTOR_HELP = "a persona vector saved by persona_lens (repeat for several traits at once)" + VECTOR_DEFAULT_HELP


def add_vector_arguments(
    parser: argparse.ArgumentParser, *, trait_option: bool = False, vector_help: str = VECTOR_HELP
) -> None:
    """``--vector`` (repeatable), optional everywhere: without it the vector extracted for ``--trait`` is used
    (:func:`default_vector_paths`). ``trait_option=True`` adds a ``--trait`` for commands that have none;
    ``vector_help`` says what a command does with it and without it."""
    parser.add_argument(
        "--vector", dest="vectors", action="append", type=Path, metavar="VECTOR.safetensors", help=vector_help
    )
    if trait_option:
        parser.add_argument(
            "--trait",
            default=None,
            help="use the vector extracted for this trait (and --model) when no --vector is given",
        )
    add_allow_other_model(parser)


def add_allow_other_model(parser: argparse.ArgumentParser) -> None:
    """``--allow-other-model``: the one switch that lets a vector of another model of the same shape through
    (``load_vectors_arg(..., allow_other_model=args.allow_other_model)``)."""
    parser.add_argument(
        "--allow-other-model",
        action="store_true",
        help="accept vectors extracted from another model with the same shape (e.g. the base of a finetune)",
    )


def load_vectors_arg(paths: list[Path], model: Any = None, allow_other_model: bool = False) -> list[Any]:
    from persona_lens.core.vectors import VectorFileError, VectorMismatchError, load_vector

    vectors = []
    for path in paths:
        try:
            vec = load_vector(path)
        except (FileNotFoundError, VectorFileError) as error:
            raise BadInput(str(error)) from None
        if model is not None:
            try:
                vec.check_compatible(model, allow_other_model=allow_other_model)
            except VectorMismatchError as error:
                raise BadInput(f"{path}: {error}") from None
        vectors.append(vec)
    return vectors


def check_positive(**values: int) -> None:
    """BadInput naming the flag when a count option is below 1."""
    for name, value in values.items():
        if value < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def load_model_layer_vectors(args: argparse.Namespace, vector_paths: list[Path]) -> tuple[Any, int, list[Any]]:
    """The model (``--model``), its one layer (``--layer``) and the persona vectors checked against the model."""
    model = load_model_arg(args)
    layer = parse_layer_spec(args.layer, model.cfg.n_layers)
    if not isinstance(layer, int):
        raise BadInput("--layer takes one layer here")
    vectors = load_vectors_arg(vector_paths, model, args.allow_other_model)
    for path, vec in zip(vector_paths, vectors):
        if not bool(vec.vectors[layer].any()):
            raise BadInput(
                f"{path}: the vector is all zero at layer {layer}, so it has no direction there (a "
                "last_prompt vector's layer 0 always is); choose another --layer"
            )
    return model, layer, vectors


def parse_layer_spec(spec: str | int, n_layers: int, *, allow_all: bool = False) -> int | list[int] | str:
    """``"20"`` -> 20; ``"10,12"`` / ``"10-12"`` -> a list; ``"all"`` -> "all" (when allowed). Checked against the
    model's ``n_layers``."""
    from persona_lens.core.layers import check_layer

    text = str(spec).strip()
    if text == "all":
        if not allow_all:
            raise BadInput("--layer all is not accepted here; give one layer number")
        return "all"
    try:
        if text.isdigit():
            return check_layer(int(text), n_layers)
        layers = parse_int_list(text)
        return [check_layer(layer, n_layers) for layer in layers]
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise BadInput(f"layer {spec!r}: {error}") from None


def extracted_vectors(run_dir: Path) -> list[Path]:
    """The response vectors extracted into a run folder (``run_dir/extract*``, one per extraction setting),
    sorted."""
    from persona_lens.experiments.extract import vector_path

    return sorted(p for p in (vector_path(d) for d in run_dir.glob("extract*") if d.is_dir()) if p.exists())


def default_vector_paths(args: argparse.Namespace, trait_name: str | None) -> list[Path]:
    """``--vector`` paths, or else the one vector extracted for the trait with ``--model`` (the same rule in
    every command): none or several found is an error naming the fix."""
    if getattr(args, "vectors", None):
        return list(args.vectors)
    if not trait_name:
        raise BadInput("give --vector FILE, or --trait NAME to use the vector extracted for that trait")
    found = extracted_vectors(default_run_dir(args.model, trait_name))
    if not found:
        raise BadInput(
            f"no --vector given and no vector extracted for {trait_name!r} with {args.model} under "
            f"{default_run_dir(args.model, trait_name)}/extract*; run `python -m persona_lens extract "
            f"{trait_name} --model {args.model}` first, or pass --vector FILE"
        )
    if len(found) > 1:
        raise BadInput(
            f"several vectors were extracted for {trait_name!r} with {args.model} (other settings): "
            f"{', '.join(map(str, found))}; choose one with --vector"
        )
    return found


def check_judge_arg(args: argparse.Namespace, trait: Any) -> None:
    """Refuse a ``--judge`` that cannot score ``trait`` (no rule, no API key) before any model is loaded."""
    from persona_lens.judges.factory import resolve_judge_kind

    try:
        resolve_judge_kind(args.judge, trait)
    except ValueError as error:
        raise BadInput(str(error)) from None


def judges_from_args(
    args: argparse.Namespace, trait: Any, model: Any = None, calibration: Path | None = None
) -> tuple[Any, Any]:
    """``(trait judge, coherence judge)`` from the shared ``--judge/--claude-model/--judge-cache/--coherence``
    options; a likelihood coherence judge's calibration is kept at ``calibration``."""
    from persona_lens.judges.factory import build_judges

    try:
        return build_judges(
            args.judge,
            trait,
            cache=args.judge_cache,
            model=model,
            claude_model=args.claude_model,
            coherence=getattr(args, "coherence", "offline"),
            calibration=calibration,
            progress=not getattr(args, "quiet", False),
        )
    except ValueError as error:
        raise BadInput(str(error)) from None


def _prompt_messages(data: Any) -> list[dict[str, str]] | str:
    """The prompt on one line of a ``.jsonl`` prompt file, or what is wrong with it."""
    from persona_lens.core.chat import make_messages, parse_messages

    if isinstance(data, dict) and isinstance(data.get("question"), str):
        return make_messages(data["question"], system=data.get("system"))
    messages = parse_messages(data)
    if isinstance(messages, str):
        return f'{messages}; expected {{"messages": [{{"role": ..., "content": ...}}]}} or {{"question": ...}}'
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        return "the prompt must end with a user message"
    return messages


def read_prompts(path: Path) -> list[list[dict[str, str]]]:
    """Prompts from a file: ``.txt`` one user question a line; ``.jsonl`` one ``{"messages": [...]}`` (ending with a
    user turn; a final assistant turn is dropped) or ``{"question": ..., "system": ...}`` a line."""
    from persona_lens.core.chat import BadRecord, iter_chat_jsonl, make_messages

    if not path.is_file():
        raise BadInput(f"no prompt file at {path}")
    if path.suffix == ".jsonl":
        prompts: list[list[dict[str, str]]] = []
        for record in iter_chat_jsonl(path, parse=_prompt_messages):
            if isinstance(record, BadRecord):
                raise BadInput(f"{path}:{record.line}: {record.problem}")
            prompts.append(record.messages)
    else:
        prompts = []
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise BadInput(
                        f"{path}:{number}: not UTF-8 text (byte {error.start} of the line); save the file as UTF-8"
                    ) from None
                if line.strip():
                    prompts.append(make_messages(line.rstrip("\r\n")))
    if not prompts:
        raise BadInput(f"{path} holds no prompt")
    return prompts


def _check_names(path: Path, flag: str, *, folder: bool) -> None:
    """The one check of :func:`persona_lens.core.io.check_output_path` (empty, over-long, a device, FIFO, socket or
    symbolic link at the path), as exit 2 naming ``flag``."""
    from persona_lens.core.io import UnsafeOutput, check_output_path

    if not str(path).strip():
        raise BadInput(f"{flag} is empty; give a folder or file name (for the current folder, '.')")
    try:
        check_output_path(path, folder=folder)
    except UnsafeOutput as error:
        if "where a" in str(error):  # a file where a folder goes, or the reverse: the callers' own sentences
            return
        raise BadInput(f"{flag}: {error}") from None


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def out_path(text: str) -> Path:
    """The ``type`` of every ``--out``: a path, never empty (``Path("")`` would be the current folder, and a run's
    files would land in it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the output path is empty; give a folder or file name (for the current folder, '.')"
        )
    return Path(text)


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """Refuse an output folder that is a file, lies under a file, cannot be written, is empty, too long, or a link,
    device or FIFO, before any work is done."""
    _check_names(path, flag, folder=True)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {path} is a file, not a folder; choose a folder path")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise BadInput(f"{flag} {path}: {existing} is a file, so the folder cannot be made; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: {existing} is not writable; choose a folder you can write to")
    return path


def check_out_file(path: Path, flag: str = "--out") -> Path:
    """Refuse an output file path that is a folder, a link, device or FIFO, or whose folder cannot be made or
    written."""
    _check_names(path, flag, folder=False)
    if path.is_dir():
        raise BadInput(f"{flag} {path} is a folder; give a file path")
    check_out_dir(path.parent if str(path.parent) else Path("."), flag=f"{flag} {path}: the folder")
    return path


_HELD_LOCKS: list[Any] = []


def lock_out(path: Path, flag: str = "--out") -> None:
    """Take the run lock of the output folder ``path`` until the command ends (:func:`release_out_locks`, called by
    :func:`persona_lens.cli.run_command`): a second run on the same folder is refused (exit 2), and a lock left by a
    killed run is no lock (the kernel drops it with the process)."""
    from persona_lens.core.io import FolderBusy, FolderLock

    check_out_dir(path, flag)
    if any(lock.folder == path for lock in _HELD_LOCKS):
        return
    try:
        _HELD_LOCKS.append(FolderLock(path).acquire())
    except FolderBusy as error:
        raise BadInput(str(error)) from None


def release_out_locks() -> None:
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().release()
