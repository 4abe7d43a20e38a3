"""The core: models and their hook points, hooks, generation, activation reading, vectors, chat, io and statistics.

Nothing in ``core`` imports ``judges``, ``traits``, ``experiments``, ``viz``, ``cli`` or ``organism`` (import-linter
checks this in CI); named models outside the core (the organism) are reached through :mod:`persona_lens.core.registry`.

The names below are the core's public API, re-exported lazily (importing ``persona_lens.core`` loads no torch);
names reachable only through a deeper module are internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "persona_lens.core.errors": ["Error"],
        "persona_lens.core.models": ["load_model", "SMOLLM2", "cache_dir"],
        "persona_lens.core.hooked_model": ["HookedLM"],
        "persona_lens.core.tiny": ["ARCHITECTURES", "build_tiny"],
        "persona_lens.core.registry": ["register"],
        "persona_lens.core.layers": ["hook_name", "layer_of_hook", "check_layer", "all_layers"],
        "persona_lens.core.chat": [
            "Message",
            "ChatRecord",
            "TemplateBoundaryError",
            "make_messages",
            "encode_prompt",
            "encode_conversation",
            "encode_generated",
            "read_chat_jsonl",
            "iter_chat_jsonl",
            "token_pieces",
        ],
        "persona_lens.core.generation": ["Generation", "generate"],
        "persona_lens.core.activations": ["Activations", "REDUCTIONS", "collect_activations", "contrast_vector"],
        "persona_lens.core.vectors": [
            "PersonaVector",
            "VectorMismatchError",
            "VectorFileError",
            "save_vector",
            "load_vector",
            "unit_directions",
            "cosine_similarity_matrix",
            "import_authors_pt",
            "export_authors_pt",
        ],
        "persona_lens.core.hooks": [
            "steer",
            "ablate",
            "cap",
            "record",
            "install_hooks",
            "AddVector",
            "AblateDirection",
            "CapProjection",
            "RecordProjection",
        ],
        "persona_lens.core.norms": ["median_residual_norms", "raw_coefficient", "relative_coefficient"],
        "persona_lens.core.controls": [
            "Baseline",
            "ControlVerdict",
            "OthersVerdict",
            "beats_controls",
            "beats_others",
            "compare",
            "random_directions",
            "random_in_span",
            "random_like",
        ],
        "persona_lens.core.stats": ["pearson", "spearman", "auroc", "fisher_ci", "mean_sem"],
        "persona_lens.core.validate": ["BadValue"],
        "persona_lens.core.io": ["FolderBusy"],
        "persona_lens.core.engine": ["OpenAIEngine", "EngineError", "EngineMismatch"],
        "persona_lens.core.vllm_engine": ["VLLMEngine", "EngineHookError", "EngineUnavailable"],
        "persona_lens.core.vllm_server": ["VLLMServer"],
    },
)

if TYPE_CHECKING:
    from persona_lens.core.activations import REDUCTIONS, Activations, collect_activations, contrast_vector
    from persona_lens.core.chat import (
        ChatRecord,
        Message,
        TemplateBoundaryError,
        encode_conversation,
        encode_generated,
        encode_prompt,
        iter_chat_jsonl,
        make_messages,
        read_chat_jsonl,
        token_pieces,
    )
    from persona_lens.core.controls import (
        Baseline,
        ControlVerdict,
        OthersVerdict,
        beats_controls,
        beats_others,
        compare,
        random_directions,
        random_in_span,
        random_like,
    )
    from persona_lens.core.engine import EngineError, EngineMismatch, OpenAIEngine
    from persona_lens.core.errors import Error
    from persona_lens.core.generation import Generation, generate
    from persona_lens.core.hooked_model import HookedLM
    from persona_lens.core.hooks import (
        AblateDirection,
        AddVector,
        CapProjection,
        RecordProjection,
        ablate,
        cap,
        install_hooks,
        record,
        steer,
    )
    from persona_lens.core.io import FolderBusy
    from persona_lens.core.layers import all_layers, check_layer, hook_name, layer_of_hook
    from persona_lens.core.models import SMOLLM2, cache_dir, load_model
    from persona_lens.core.norms import median_residual_norms, raw_coefficient, relative_coefficient
    from persona_lens.core.registry import register
    from persona_lens.core.stats import auroc, fisher_ci, mean_sem, pearson, spearman
    from persona_lens.core.tiny import ARCHITECTURES, build_tiny
    from persona_lens.core.validate import BadValue
    from persona_lens.core.vectors import (
        PersonaVector,
        VectorFileError,
        VectorMismatchError,
        cosine_similarity_matrix,
        export_authors_pt,
        import_authors_pt,
        load_vector,
        save_vector,
        unit_directions,
    )
    from persona_lens.core.vllm_engine import EngineHookError, EngineUnavailable, VLLMEngine
    from persona_lens.core.vllm_server import VLLMServer
