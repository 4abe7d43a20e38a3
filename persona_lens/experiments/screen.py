"""Data screening (paper section 7): which training samples would push a model along a persona vector.

For a chat dataset of (prompt ``x_i``, response ``y_i``) and the base model's own response ``y'_i`` to the same
prompt, with ``a_l(x, y)`` the mean residual stream over the response tokens at layer ``l`` and ``v`` the unit
persona vector:

    dP_i = [a_l(x_i, y_i) - a_l(x_i, y'_i)] . v           (projection difference, per sample)
    dP   = mean_i dP_i                                    (per dataset)

and the cheap variant that needs no generation, with ``a_l(x)`` the activation at the last prompt token:

    dP_i^last = [a_l(x_i, y_i) - a_l(x_i)] . v

How it runs (:func:`screen_dataset`):

* The JSONL file is **streamed** in chunks of ``chunk_size`` records; each chunk's results are appended to the
  output JSONL (one row per input line, in input order) before the next chunk is read, so memory does not grow
  with the dataset.
* The base model's responses are generated in batches and kept in a SQLite cache keyed by model, generation
  settings and prompt tokens: a rerun, or a resume, never generates a response twice.
* **Resume**: rows already in the output are skipped (the output is in input order, so the last row says where to
  go on); a row torn by an interruption is dropped and redone (:class:`persona_lens.core.io.JsonlRecords`).
  Settings are recorded beside the output (``<output>.settings.json``) and a resume under other settings is refused.
* **Bad records** are never dropped silently (:func:`persona_lens.core.chat.iter_chat_jsonl`): lines that are not
  UTF-8, invalid JSON, missing roles, empty text, no final assistant reply, prompts (or conversations) longer than
  ``max_tokens`` tokens, and responses the chat template cannot place exactly each get a row
  ``{"line": n, "status": "bad", "problem": ...}``, counted in :func:`summarize`.
* Results: :func:`summarize` (dataset-level means, counts, problems), :func:`export_ranked` (samples ranked by dP,
  JSONL or CSV, with their conversation), :func:`load_scores` (for histograms and AUROC).
* Controls (:mod:`persona_lens.core.controls`): with ``ScreenConfig.controls = K`` (default 100) each row also holds
  ``dp_random`` and ``dp_last_prompt_random``, the same differences along ``K`` seeded random unit directions at the
  layer (one set for the run, shared by every trait: they cost one matmul on the activations already read).
  :func:`summarize` reports each trait's mean dP beside the random directions' (``baselines``);
  :func:`compare_datasets` gives, per dataset against a reference, the sample-level AUROC and the dataset-level
  difference of mean dP, each beside the random directions', the other traits' vectors (cross-trait) and the
  flipped vector (:class:`DatasetComparison`).

Sampled base responses (``temperature > 0``) are seeded by their position in the chunk's generation call, so
they depend on ``chunk_size``; the default, greedy, does not.

Why one module of ~840 lines: the screening loop writes the per-sample rows (``SCORE_KEYS``, one row per input
line, in input order) and the readers below it (:func:`summarize`, :func:`load_scores`, :func:`export_ranked`,
:func:`compare_datasets`) read exactly those rows by line offset; keeping writer and readers together keeps that
row format in one place. (A split into ``screen/`` as done for the space is the next step once the engine backends,
which change the generation part of the loop, have landed.)
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from persona_lens.core import stats
from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import (
    BadRecord,
    ChatRecord,
    TemplateBoundaryError,
    encode_conversation,
    encode_generated,
    encode_prompt,
    iter_chat_jsonl,
)
from persona_lens.core.controls import (
    DEFAULT_RANDOM_DIRECTIONS,
    Baseline,
    baselines_to_dict,
    compare,
    compare_measure,
    layer_controls,
)
from persona_lens.core.generation import generate
from persona_lens.core.hooked_model import HookedLM
from persona_lens.core.io import JsonlRecords, SqliteStore, atomic_output, check_settings
from persona_lens.core.layers import check_layer
from persona_lens.core.vectors import VectorLike, trait_names, unit_directions, vector_digest, vector_list
from persona_lens.experiments.executor import Executor, executor_settings

__all__ = [
    "ScreenConfig",
    "BaseResponseCache",
    "screen_dataset",
    "summarize",
    "load_scores",
    "export_ranked",
    "SCORE_KEYS",
    "load_random_scores",
    "DatasetComparison",
    "compare_datasets",
]

#: The per-sample numbers in each output row, by trait: the projection difference against the base response
#: (``dp``), the cheap variant against the last prompt token (``dp_last_prompt``), and the three projections.
SCORE_KEYS = ("dp", "dp_last_prompt", "proj_response", "proj_base", "proj_last_prompt")


@dataclass
class ScreenConfig:
    """Settings of a screening run (all of them are recorded, and must match on resume)."""

    layer: int
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    chunk_size: int = 64
    max_tokens: int = 2048
    controls: int = DEFAULT_RANDOM_DIRECTIONS
    """Random control directions scored beside the vectors (``dp_random`` in each row); 0: none."""
    control_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "chunk_size", "max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.controls, int) or self.controls < 0:
            raise ValueError(f"controls must be an int >= 0 (0: no random directions), got {self.controls!r}")

    def generation(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------------------------------------------------------
# reading


def _read_line_at(path: Path, offset: int) -> dict[str, Any] | None:
    with open(path, "rb") as handle:
        handle.seek(offset)
        try:
            return json.loads(handle.readline().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


# ---------------------------------------------------------------------------------------------------------------------
# the base-response cache


class BaseResponseCache:
    """The base model's responses, on disk (SQLite), keyed by model, generation settings and prompt tokens."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._store = SqliteStore(
            self.path,
            "responses",
            {"key": "TEXT NOT NULL"},
            {"response_ids": "TEXT NOT NULL", "text": "TEXT NOT NULL", "stopped": "INTEGER NOT NULL"},
        )
        self.hits = 0
        self.generated = 0

    @staticmethod
    def key(model_name: str, generation: dict[str, Any], prompt_ids: Sequence[int]) -> str:
        payload = json.dumps([model_name, generation, list(prompt_ids)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[list[int], str, bool]]:
        return {
            key: (json.loads(ids), text, bool(stopped))
            for key, (ids, text, stopped) in self._store.get_many(keys).items()
        }

    def put_many(self, entries: dict[str, tuple[list[int], str, bool]]) -> None:
        self._store.put_many({k: (json.dumps(ids), text, int(stopped)) for k, (ids, text, stopped) in entries.items()})

    def __len__(self) -> int:
        return self._store.count()


# ---------------------------------------------------------------------------------------------------------------------
# output file


def _settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def _resume_point(output: JsonlRecords) -> int:
    """The input line of the last complete row of ``output`` (0 if none); a torn last row is redone."""
    last_line = 0
    for row, _ in output.rows():
        last_line = int(row["line"])
    return last_line


# ---------------------------------------------------------------------------------------------------------------------
# screening


@dataclass
class _Prepared:
    line: int
    offset: int | None
    prompt_ids: list[int]
    encoded: Any
    key: str


def _prepare(
    model: HookedLM, record: ChatRecord, config: ScreenConfig, generation: dict[str, Any]
) -> _Prepared | BadRecord:
    prompt_ids = encode_prompt(model.tokenizer, record.prompt)
    if len(prompt_ids) > config.max_tokens:
        return BadRecord(
            record.line, f"prompt has {len(prompt_ids)} tokens > max_tokens {config.max_tokens}", record.offset
        )
    try:
        encoded = encode_conversation(model.tokenizer, record.prompt, record.response)
    except TemplateBoundaryError as error:
        return BadRecord(record.line, f"chat template: {error}", record.offset)
    if len(encoded.input_ids) > config.max_tokens:
        return BadRecord(
            record.line,
            f"conversation has {len(encoded.input_ids)} tokens > max_tokens {config.max_tokens}",
            record.offset,
        )
    key = BaseResponseCache.key(model.cfg.model_name, generation, prompt_ids)
    return _Prepared(record.line, record.offset, prompt_ids, encoded, key)


def _base_responses(
    model: HookedLM, items: Sequence[_Prepared], cache: BaseResponseCache, config: ScreenConfig
) -> dict[str, tuple[list[int], str, bool]]:
    found = cache.get_many([item.key for item in items])
    cache.hits += sum(1 for item in items if item.key in found)
    missing: dict[str, list[int]] = {}
    for item in items:
        if item.key not in found:
            missing.setdefault(item.key, item.prompt_ids)
    if missing:
        new = _generate_base(model, (list(missing), list(missing.values()), config, None))
        cache.put_many(new)  # on disk before anything else: an interruption loses no generation
        cache.generated += len(new)
        found.update(new)
    return found


_BaseUnit = tuple[list[str], list[list[int]], ScreenConfig, Any]


@dataclass
class _PendingChunks:
    """The records of ``data`` after line ``done``, in chunks of ``size``, reading at most ``limit`` records counted
    from the file's start (those done before a resume included); ``n_seen`` counts the records read so far. The
    executor's units and the serial loop both walk it, so they see the same chunks."""

    data: Path
    done: int
    limit: int | None
    size: int
    n_seen: int = 0

    def __iter__(self) -> Iterator[list[ChatRecord | BadRecord]]:
        chunk: list[ChatRecord | BadRecord] = []
        for record in iter_chat_jsonl(self.data):
            if self.limit is not None and self.n_seen >= self.limit:
                break
            self.n_seen += 1
            if record.line <= self.done:
                continue
            chunk.append(record)
            if len(chunk) >= self.size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _generate_base(model: HookedLM, unit: _BaseUnit) -> dict[str, tuple[list[int], str, bool]]:
    """One chunk's missing base replies in one generate call (a unit of work for an executor), by cache key."""
    keys, prompts, config, _ = unit
    generation = generate(
        model,
        prompts,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    return {
        k: (ids, text, stopped)
        for k, ids, text, stopped in zip(keys, generation.response_ids, generation.texts, generation.stopped)
    }


def _engine_base(engine: Any, model: HookedLM, unit: _BaseUnit) -> dict[str, tuple[list[int], str, bool]]:
    """The same replies from a serving engine (they need no hooks), to the prompts' chat messages."""
    keys, prompts, config, messages = unit
    out = engine.generate(
        model,
        messages,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seeds=[config.seed + i for i in range(len(prompts))],
    )
    if out.prompt_ids != prompts:
        raise ValueError("the engine's prompts do not tokenize as the screening prompts")
    return {k: (ids, text, stopped) for k, ids, text, stopped in zip(keys, out.response_ids, out.texts, out.stopped)}


_generate_base.on_engine = _engine_base  # type: ignore[attr-defined]


def _prefill_base_responses(
    model: HookedLM,
    data: Path,
    config: ScreenConfig,
    generation: dict[str, Any],
    cache: BaseResponseCache,
    done: int,
    limit: int | None,
    executor: Executor,
) -> int:
    """Generate on ``executor`` the base replies that the chunks still to screen will ask the cache for.

    The units are exactly the generate calls the serial loop would make (same chunks, same prompts, same order
    within a call), so the replies are the same; each lands in the cache as its unit finishes. Returns how many.
    """
    assigned: set[str] = set()

    def unit(chunk: list[ChatRecord | BadRecord]) -> _BaseUnit | None:
        records = [r for r in chunk if not isinstance(r, BadRecord)]
        items = [_prepare(model, r, config, generation) for r in records]
        found = cache.get_many([item.key for item in items if isinstance(item, _Prepared)])
        missing: dict[str, tuple[list[int], Any]] = {}
        for record, item in zip(records, items):
            if isinstance(item, _Prepared) and item.key not in found and item.key not in assigned:
                missing.setdefault(item.key, (item.prompt_ids, record.prompt))
        assigned.update(missing)
        values = list(missing.values())
        return (list(missing), [v[0] for v in values], config, [v[1] for v in values]) if missing else None

    def units() -> Iterator[_BaseUnit]:
        for chunk in _PendingChunks(data, done, limit, config.chunk_size):
            todo = unit(chunk)
            if todo is not None:
                yield todo

    count = 0
    for _, new in executor.map(_generate_base, units(), model):
        cache.put_many(new)
        count += len(new)
    return count


def _score_chunk(
    model: HookedLM,
    items: Sequence[_Prepared],
    base: dict[str, tuple[list[int], str, bool]],
    units: torch.Tensor,
    names: list[str],
    layer: int,
    batch_size: int,
    random_units: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    dataset_convs = [item.encoded for item in items]
    with_base = [i for i, item in enumerate(items) if base[item.key][0]]
    base_convs = [encode_generated(items[i].prompt_ids, base[items[i].key][0]) for i in with_base]
    acts = collect_activations(
        model,
        dataset_convs,
        reductions=("response", "last_prompt"),
        layers=[layer],
        batch_size=batch_size,
        progress=False,
    )
    if random_units is not None:  # the controls: the same numbers along the random directions, after the vectors
        units = torch.cat([units, random_units])
    response = acts.get("response")[:, layer] @ units.T  # [n, k (+ K)]
    last_prompt = acts.get("last_prompt")[:, layer] @ units.T
    base_proj = torch.full_like(response, float("nan"))
    if base_convs:
        base_acts = collect_activations(
            model, base_convs, reductions=("response",), layers=[layer], batch_size=batch_size, progress=False
        )
        base_proj[with_base] = base_acts.get("response")[:, layer] @ units.T
    k = len(names)
    rows = []
    for i, item in enumerate(items):
        ids, text, stopped = base[item.key]

        def by_trait(values: torch.Tensor, i: int = i) -> dict[str, float | None]:
            return {n: (None if math.isnan(float(v)) else float(v)) for n, v in zip(names, values[i])}

        row: dict[str, Any] = {
            "line": item.line,
            "offset": item.offset,
            "status": "ok",
            "n_prompt_tokens": len(item.prompt_ids),
            "n_response_tokens": item.encoded.response_end - item.encoded.response_start,
            "n_base_tokens": len(ids),
            "base_stopped": stopped,
            "base_response": text,
            "dp": by_trait(response - base_proj),
            "dp_last_prompt": by_trait(response - last_prompt),
            "proj_response": by_trait(response),
            "proj_base": by_trait(base_proj),
            "proj_last_prompt": by_trait(last_prompt),
        }
        if random_units is not None:
            dp_random = (response[i, k:] - base_proj[i, k:]).tolist()
            row["dp_random"] = None if not ids else [float(f"{v:.5g}") for v in dp_random]
            row["dp_last_prompt_random"] = [float(f"{v:.5g}") for v in (response[i, k:] - last_prompt[i, k:]).tolist()]
        if not ids:
            row["problem"] = "the base model's reply is empty, so dp is undefined (dp_last_prompt is kept)"
        rows.append(row)
    return rows


def screen_dataset(
    model: HookedLM,
    data_path: str | os.PathLike[str],
    vectors: VectorLike | Sequence[VectorLike],
    output_path: str | os.PathLike[str],
    config: ScreenConfig,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    allow_other_model: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Screen a chat JSONL file; rows go to ``output_path`` (JSONL), resumably. Returns :func:`summarize`'s report
    plus how many base responses came from the cache and how many were generated in this call.

    ``executor`` (e.g. Ray workers) generates the base responses of all chunks first, in parallel, into the cache;
    the rows are then scored here, and are the same as without it.

    ``cache_path`` (default ``<output>.base_responses.sqlite``) may be shared between datasets and runs.
    ``limit`` stops after that many input records in total (counting those done before a resume).
    """
    check_layer(config.layer, model.cfg.n_layers)
    units = unit_directions(vectors, config.layer, model, allow_other_model=allow_other_model)
    names = trait_names(vectors)
    random_units = None
    if config.controls:
        random_units = layer_controls(vector_list(vectors)[0], config.layer, config.controls, seed=config.control_seed)
        random_units = random_units / random_units.norm(dim=-1, keepdim=True)
    data = Path(data_path)
    if not data.is_file():
        raise FileNotFoundError(f"no dataset at {data}")
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    generation = config.generation()
    settings = {
        "format": "persona_lens.experiments.screen",
        "model": model.cfg.model_name,
        "data": str(data.resolve()),
        "traits": names,
        "vectors_sha256": [vector_digest(vec) for vec in vector_list(vectors)],
        "layer": config.layer,
        "generation": generation,
        "max_tokens": config.max_tokens,
    }
    if config.controls:  # recorded only when used, so results screened before controls existed still resume
        settings["controls"] = {"k": config.controls, "seed": config.control_seed}
    settings.update(executor_settings(executor))  # the served model name, when an engine makes the base replies
    check_settings(_settings_path(output), settings, what="screening results")
    cache = BaseResponseCache(cache_path or output.with_name(output.name + ".base_responses.sqlite"))
    store = JsonlRecords(output)
    done = _resume_point(store)
    prefilled = 0
    if executor is not None:
        prefilled = _prefill_base_responses(model, data, config, generation, cache, done, limit, executor)
        cache.generated += prefilled
    bar = tqdm(desc=f"screen {data.name}", unit="rec", disable=not progress)

    def flush(chunk: list[ChatRecord | BadRecord]) -> None:
        prepared: list[_Prepared] = []
        rows: dict[int, dict[str, Any]] = {}
        for record in chunk:
            item = record if isinstance(record, BadRecord) else _prepare(model, record, config, generation)
            if isinstance(item, BadRecord):
                rows[item.line] = {"line": item.line, "offset": item.offset, "status": "bad", "problem": item.problem}
            else:
                prepared.append(item)
        if prepared:
            base = _base_responses(model, prepared, cache, config)
            for row in _score_chunk(model, prepared, base, units, names, config.layer, config.batch_size, random_units):
                rows[row["line"]] = row
        store.append([rows[line] for line in sorted(rows)])
        bar.update(len(chunk))

    chunks = _PendingChunks(data, done, limit, config.chunk_size)
    for chunk in chunks:
        flush(chunk)
    bar.close()
    if chunks.n_seen == 0:
        raise ValueError(
            f"{data} holds no record (it is empty, or blank lines only); give a chat JSONL file with one "
            '{"messages": [...]} conversation a line'
        )
    report = summarize(output)
    report.update(
        base_responses_cached=cache.hits - prefilled,
        base_responses_generated=cache.generated,
        cache=str(cache.path),
        output=str(output),
        data=str(data),
        layer=config.layer,
    )
    return report


# ---------------------------------------------------------------------------------------------------------------------
# results


def summarize(results_path: str | os.PathLike[str], max_problems: int = 200) -> dict[str, Any]:
    """Dataset-level numbers from a results file, in one streaming pass: counts, every problem kind, the first
    ``max_problems`` problems with their line numbers, and per trait the mean (and count) of dp and dp_last_prompt.
    """
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    without_base = 0
    problems: list[dict[str, Any]] = []
    sums: dict[str, dict[str, list[float]]] = {"dp": {}, "dp_last_prompt": {}}
    random_sums: dict[str, list[Any]] = {}  # key -> [sum over rows (array K), count]
    traits: list[str] = []
    for row, _ in JsonlRecords(results_path).rows():
        counts[row["status"]] += 1
        if "problem" in row:
            kind = row["problem"].split(" (")[0].split(":")[0]
            kind = "".join("N" if c.isdigit() else c for c in kind)
            kinds[kind] += 1
            if len(problems) < max_problems:
                problems.append({"line": row["line"], "status": row["status"], "problem": row["problem"]})
        if row["status"] != "ok":
            continue
        without_base += "problem" in row
        for key in ("dp", "dp_last_prompt"):
            random_values = row.get(f"{key}_random")
            if random_values is not None:
                total_random = random_sums.setdefault(key, [np.zeros(len(random_values)), 0])
                if len(random_values) == len(total_random[0]):
                    total_random[0] += np.asarray(random_values, dtype=np.float64)
                    total_random[1] += 1
            for trait, value in row[key].items():
                if trait not in traits:
                    traits.append(trait)
                if value is not None:
                    total = sums[key].setdefault(trait, [0.0, 0])
                    total[0] += value
                    total[1] += 1
    means = {
        key: {t: (sums[key][t][0] / sums[key][t][1] if t in sums[key] and sums[key][t][1] else None) for t in traits}
        for key in sums
    }
    n_scored = {t: int(sums["dp"][t][1]) if t in sums["dp"] else 0 for t in traits}
    random_means = {key: (total / count).tolist() for key, (total, count) in random_sums.items() if count}
    baselines = {
        t: {
            f"mean_{key}": compare(
                f"mean {key}",
                means[key][t],
                random_means.get(key, []),
                others={o: means[key][o] for o in traits if o != t and means[key][o] is not None},
                flipped=None if means[key][t] is None else -means[key][t],
            )
            for key in sums
            if means[key][t] is not None
        }
        for t in traits
    }
    return {
        "results": str(results_path),
        "n_rows": sum(counts.values()),
        "n_ok": counts["ok"],
        "n_bad": counts["bad"],
        "n_without_base_response": without_base,
        "traits": traits,
        "mean_dp": means["dp"],
        "mean_dp_last_prompt": means["dp_last_prompt"],
        "n_scored": n_scored,
        "problem_counts": dict(kinds),
        "problems": problems,
        "baselines": baselines_to_dict(baselines),
    }


def load_scores(results_path: str | os.PathLike[str], trait: str, key: str = "dp") -> tuple[np.ndarray, np.ndarray]:
    """``(line numbers, scores)`` of the rows with a score for ``trait`` (numpy arrays: 16 bytes a row)."""
    if key not in SCORE_KEYS:
        raise ValueError(f"unknown score {key!r}; use one of {SCORE_KEYS}")
    lines: list[int] = []
    values: list[float] = []
    seen_trait = False
    for row, _ in JsonlRecords(results_path).rows():
        if row["status"] != "ok":
            continue
        if trait in row[key]:
            seen_trait = True
        value = row[key].get(trait)
        if value is not None:
            lines.append(row["line"])
            values.append(value)
    if not seen_trait and lines == []:
        known = summarize(results_path, max_problems=0)["traits"]
        if known and trait not in known:
            raise KeyError(f"no trait {trait!r} in {results_path}; it has {known}")
    return np.asarray(lines, dtype=np.int64), np.asarray(values, dtype=np.float64)


def export_ranked(
    results_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    trait: str,
    *,
    key: str = "dp",
    top: int | None = None,
    ascending: bool = False,
) -> Path:
    """Write the samples ranked by ``key`` for ``trait`` (highest first, unless ``ascending``), each with its rank,
    line, scores, the dataset conversation and the base response. ``.csv`` writes CSV, anything else JSONL.

    Memory: three numbers per row for a full ranking (or ``top`` rows with a heap); each sample's text is read back
    from the files by offset while writing.
    """
    if key not in SCORE_KEYS:
        raise ValueError(f"unknown score {key!r}; use one of {SCORE_KEYS}")
    sign = 1.0 if ascending else -1.0
    entries: list[tuple[float, int, int]] = []  # (signed score, result offset, line)
    if top is not None:
        heap: list[tuple[float, int, int]] = []  # keeps the `top` best: a max-heap on the signed score
        for row, offset in JsonlRecords(results_path).rows():
            value = row.get(key, {}).get(trait) if row["status"] == "ok" else None
            if value is None:
                continue
            item = (-sign * value, -row["line"], offset)
            if len(heap) < top:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
        entries = sorted(((-neg_score, o, -neg_line) for neg_score, neg_line, o in heap), key=lambda e: (e[0], e[2]))
    else:
        scores, offsets, lines = [], [], []
        for row, offset in JsonlRecords(results_path).rows():
            value = row.get(key, {}).get(trait) if row["status"] == "ok" else None
            if value is not None:
                scores.append(sign * value)
                offsets.append(offset)
                lines.append(row["line"])
        score_array = np.asarray(scores, dtype=np.float64)
        line_array = np.asarray(lines, dtype=np.int64)
        offset_array = np.asarray(offsets, dtype=np.int64)
        del scores, offsets, lines
        order = np.lexsort((line_array, score_array))
        entries = [(float(score_array[i]), int(offset_array[i]), int(line_array[i])) for i in order]
    target = Path(out_path)
    results, data = Path(results_path), Path(data_path)
    with atomic_output(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle) if target.suffix == ".csv" else None
        if writer is not None:
            writer.writerow(["rank", "line", *SCORE_KEYS, "prompt", "response", "base_response"])
        for rank, (_, offset, line) in enumerate(entries, start=1):
            row = _read_line_at(results, offset) or {}
            record = _read_line_at(data, row.get("offset", -1)) if row.get("offset", -1) >= 0 else None
            messages = record.get("messages") if isinstance(record, dict) else None
            if writer is not None:
                prompt = messages[-2]["content"] if messages and len(messages) >= 2 else ""
                response = messages[-1]["content"] if messages else ""
                writer.writerow(
                    [
                        rank,
                        line,
                        *(row.get(k, {}).get(trait) for k in SCORE_KEYS),
                        prompt,
                        response,
                        row.get("base_response", ""),
                    ]
                )
            else:
                out = {
                    "rank": rank,
                    "line": line,
                    "trait": trait,
                    **{k: row.get(k, {}).get(trait) for k in SCORE_KEYS},
                    "messages": messages,
                    "base_response": row.get("base_response"),
                }
                handle.write(json.dumps(out, ensure_ascii=False) + "\n")
    return target


# ---------------------------------------------------------------------------------------------------------------------
# controls: datasets compared, beside random directions and the other traits


def load_random_scores(results_path: str | os.PathLike[str], key: str = "dp") -> tuple[np.ndarray, np.ndarray]:
    """``(line numbers, [n, K] float32)``: each scored row's ``key`` along the K random control directions (rows
    without them are left out; ``K = 0`` when the results hold no controls)."""
    if key not in ("dp", "dp_last_prompt"):
        raise ValueError(f"controls are kept for dp and dp_last_prompt, not {key!r}")
    lines: list[int] = []
    values: list[list[float]] = []
    for row, _ in JsonlRecords(results_path).rows():
        random_values = row.get(f"{key}_random") if row["status"] == "ok" else None
        if random_values is not None and (not values or len(random_values) == len(values[0])):
            lines.append(row["line"])
            values.append(random_values)
    width = len(values[0]) if values else 0
    return np.asarray(lines, dtype=np.int64), np.asarray(values, dtype=np.float32).reshape(len(values), width)


@dataclass
class DatasetComparison:
    """One dataset against a reference dataset, on one trait's ``key`` (dp or dp_last_prompt): the sample-level
    AUROC (dataset = positive) and the dataset-level difference of mean scores, each beside its controls in
    ``baselines`` (``"auroc"``, ``"mean_difference"``): random directions, other traits' vectors, flipped vector."""

    dataset: str
    reference: str
    trait: str
    key: str
    n: int
    n_reference: int
    baselines: dict[str, Baseline]

    @property
    def auroc(self) -> float:
        return self.baselines["auroc"].value

    @property
    def mean_difference(self) -> float:
        return self.baselines["mean_difference"].value

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "reference": self.reference,
            "trait": self.trait,
            "key": self.key,
            "n": self.n,
            "n_reference": self.n_reference,
            "auroc": self.auroc,
            "mean_difference": self.mean_difference,
            "baselines": baselines_to_dict(self.baselines),
        }


def _aligned(
    results_path: str | os.PathLike[str], traits: Sequence[str], key: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every trait's ``key`` and the random controls over the rows where all of them are defined."""
    columns: dict[str, list[float]] = {t: [] for t in traits}
    randoms: list[list[float]] = []
    with_random = True
    for row, _ in JsonlRecords(results_path).rows():
        if row["status"] != "ok":
            continue
        values = [row.get(key, {}).get(t) for t in traits]
        if any(v is None for v in values):
            continue
        for t, v in zip(traits, values):
            columns[t].append(v)
        random_values = row.get(f"{key}_random")
        if random_values is None or (randoms and len(random_values) != len(randoms[0])):
            with_random = False
        else:
            randoms.append(random_values)
    arrays = {t: np.asarray(v, dtype=np.float64) for t, v in columns.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    random = np.asarray(randoms, dtype=np.float64).T if with_random and randoms and len(randoms) == n else None
    return arrays, random


def compare_datasets(
    results: Mapping[str, str | os.PathLike[str]], trait: str, key: str = "dp", *, reference: str | None = None
) -> dict[str, DatasetComparison]:
    """Each dataset of ``results`` (name -> screening results file) against ``reference`` (default: the first), on
    ``trait``: sample-level AUROC and dataset-level mean difference, beside the random directions kept in the files
    (when both files have them, from the same run settings), the files' other traits and the flipped vector."""
    if key not in ("dp", "dp_last_prompt"):
        raise ValueError(f"datasets are compared on dp or dp_last_prompt, not {key!r}")
    names = list(results)
    if len(names) < 2:
        raise ValueError("comparing datasets needs at least two results files")
    reference = names[0] if reference is None else reference
    if reference not in results:
        raise KeyError(f"no dataset {reference!r} among {names}")
    traits = summarize(results[reference], max_problems=0)["traits"]
    if trait not in traits:
        raise KeyError(f"no trait {trait!r} in {results[reference]}; it has {traits}")
    ref_columns, ref_random = _aligned(results[reference], traits, key)
    out = {}
    for name in names:
        if name == reference:
            continue
        columns, random = _aligned(results[name], traits, key)
        n, n_ref = len(columns[trait]), len(ref_columns[trait])
        labels = np.r_[np.ones(n), np.zeros(n_ref)]
        both = {t: torch.as_tensor(np.r_[columns[t], ref_columns[t]]) for t in traits}
        random_both = None
        if random is not None and ref_random is not None and random.shape[0] == ref_random.shape[0]:
            random_both = torch.as_tensor(np.concatenate([random, ref_random], axis=1))
        others = {t: v for t, v in both.items() if t != trait}

        def difference(values: torch.Tensor, n: int = n, n_ref: int = n_ref) -> float:
            values = values.double()
            return float(values[:n].mean() - values[n:].mean()) if n and n_ref else math.nan

        def area(values: torch.Tensor, labels: np.ndarray = labels) -> float:
            return stats.auroc(values, labels)

        out[name] = DatasetComparison(
            name,
            reference,
            trait,
            key,
            n,
            n_ref,
            {
                "auroc": compare_measure("auroc", area, both[trait], random_both, others=others),
                "mean_difference": compare_measure(
                    f"mean {key} difference", difference, both[trait], random_both, others=others
                ),
            },
        )
    return out
