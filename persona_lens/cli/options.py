"""Options shared by the commands (same names everywhere) and turning them into objects."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from persona_lens.cli import BadInput

__all__ = ["add_model_options", "add_judge_options", "add_vector_arguments", "load_model_arg", "load_named_model",
           "load_trait_arg", "load_vectors_arg", "parse_int_list", "parse_float_list", "parse_layer_spec", "slug",
           "default_run_dir", "default_vector_paths", "judges_from_args", "read_prompts"]

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_model_options(parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=default,
                        help="model: 'smollm2-135m-instruct' (embedded default), a tiny-* test model, a local HF "
                             f"folder or a Hugging Face id (default: {default})")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 CPU)")


def add_judge_options(parser: argparse.ArgumentParser, *, coherence: str = "judge") -> None:
    parser.add_argument("--judge", default="auto", choices=["auto", "rule", "claude", "local"],
                        help="who scores replies: the trait's exact rule, Claude (ANTHROPIC_API_KEY), or the model "
                             "itself from number-token probabilities; auto = rule when the trait has one, else claude")
    parser.add_argument("--claude-model", default=None, help="Claude model for --judge claude")
    parser.add_argument("--judge-cache", type=Path, default=Path("runs/judge_cache.sqlite"),
                        help="SQLite cache of judge scores shared by all runs (default: runs/judge_cache.sqlite)")
    parser.add_argument("--coherence", default=coherence, choices=["judge", "auto", "likelihood", "rule"],
                        help="who scores coherence: the --judge's own (rule coherence, or the coherence rubric), "
                             "'likelihood' (the unsteered model's own per-token likelihood of the reply given the "
                             "question, calibrated on its own replies, plus a relevance check; fluent nonsense fails "
                             "it), 'rule', or 'auto' (likelihood for rule-measured traits; default: "
                             f"{coherence})")


def load_model_arg(args: argparse.Namespace) -> Any:
    """The ``--model`` with ``--device/--dtype``."""
    return load_named_model(args.model, args)


def load_trait_arg(name: str) -> Any:
    from persona_lens.traits.schema import TraitError, load_trait

    try:
        return load_trait(name)
    except TraitError as error:
        raise BadInput(str(error)) from error


def _parse_list(text: str, convert: Any, what: str) -> list:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(-?\d+)-(-?\d+)", part) if convert is int else None
        try:
            if match:
                values.extend(range(int(match.group(1)), int(match.group(2)) + 1))
            else:
                values.append(convert(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {part!r} in {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
    return values


def parse_int_list(text: str) -> list[int]:
    """``"4,8,12"`` or ``"10-20"`` or a mix."""
    return _parse_list(text, int, "layer")


def parse_float_list(text: str) -> list[float]:
    return _parse_list(text, float, "number")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_") or "model"


def default_run_dir(model: str, trait: str) -> Path:
    return Path("runs") / slug(Path(model).name if Path(model).exists() else model) / slug(trait)


def load_named_model(name: str, args: argparse.Namespace):
    """Load a model other than ``--model`` (a finetuned folder, a base model) with the ``--device/--dtype`` options."""
    from persona_lens.core.models import load_model

    try:
        return load_model(name, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None))
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load model {name!r}: {error}") from None


def add_vector_arguments(parser: argparse.ArgumentParser, required: bool = True, default_help: str = "") -> None:
    parser.add_argument("--vector", dest="vectors", action="append", required=required, type=Path,
                        metavar="VECTOR.safetensors",
                        help="a persona vector saved by persona_lens (repeat for several traits at once)"
                             + default_help)
    parser.add_argument("--allow-other-model", action="store_true",
                        help="accept vectors extracted from another model with the same shape (e.g. the base of a "
                             "finetune)")


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
    return model, layer, load_vectors_arg(vector_paths, model, args.allow_other_model)


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


def default_vector_paths(args: argparse.Namespace, trait_name: str) -> list[Path]:
    """``--vector`` paths, or the vector extracted into the default run folder of ``--model`` and the trait."""
    if args.vectors:
        return list(args.vectors)
    from persona_lens.experiments.extract import vector_path

    path = vector_path(default_run_dir(args.model, trait_name) / "extract")
    if not path.exists():
        raise BadInput(f"no --vector given and no extracted vector at {path}; pass --vector FILE or run "
                       f"`python -m persona_lens extract --trait {trait_name}` first")
    return [path]


def judges_from_args(args: argparse.Namespace, trait: Any, model: Any = None,
                     calibration: Path | None = None) -> tuple[Any, Any]:
    """``(trait judge, coherence judge)`` from the shared ``--judge/--claude-model/--judge-cache/--coherence``
    options; a likelihood coherence judge's calibration is kept at ``calibration``."""
    from persona_lens.judges.factory import build_judges

    try:
        return build_judges(args.judge, trait, cache=args.judge_cache, model=model, claude_model=args.claude_model,
                            coherence=getattr(args, "coherence", "judge"), calibration=calibration)
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
        with open(path, encoding="utf-8") as handle:
            prompts = [make_messages(line.rstrip("\n")) for line in handle if line.strip()]
    if not prompts:
        raise BadInput(f"{path} holds no prompt")
    return prompts
