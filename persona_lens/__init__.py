"""persona_lens: find, monitor and control persona vectors on TransformerLens.

Everything a user example needs is importable from here, grouped below by task; the names are re-exported lazily
(PEP 562): ``import persona_lens`` and every ``--help`` load no torch, the first use of a name imports the module
that defines it. The subpackages' ``__init__`` hold the rest of the public API (:mod:`persona_lens.core`,
:mod:`persona_lens.judges`, :mod:`persona_lens.traits`, :mod:`persona_lens.experiments`, :mod:`persona_lens.viz`,
:mod:`persona_lens.organism`); names reachable only through a deeper module are internal and may change.

Packages, in data-flow order (import-linter enforces that each imports only those below it):
``core`` (models, hooks, generation, activations, vectors, chat, io, stats) <- ``judges`` <- ``traits`` <-
``experiments`` (extract, steering_sweep, monitor, shift, screen, finetune, export, space) and ``viz`` (figures) <-
``cli``; ``organism`` (the model organism) is reached by the core only through ``core.registry`` strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports
from persona_lens.core.version import __version__

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # errors: ``except persona_lens.Error`` catches every error persona_lens raises on purpose
        "persona_lens.core.errors": ["Error"],
        # models, chat and generation
        "persona_lens.core.models": ["load_model"],
        "persona_lens.core.hooked_model": ["HookedLM"],
        "persona_lens.core.chat": [
            "make_messages",
            "encode_prompt",
            "encode_conversation",
            "encode_generated",
            "read_chat_jsonl",
        ],
        "persona_lens.core.generation": ["generate"],
        # traits and roles (data)
        "persona_lens.traits.schema": ["Trait", "list_traits", "load_trait"],
        "persona_lens.traits.roles": ["load_roles"],
        # vectors, activations, hooks
        "persona_lens.core.vectors": ["PersonaVector", "load_vector", "save_vector"],
        "persona_lens.core.activations": ["collect_activations", "contrast_vector"],
        "persona_lens.core.hooks": ["ablate", "cap", "record", "steer"],
        "persona_lens.core.norms": ["median_residual_norms"],
        # controls and statistics
        "persona_lens.core.controls": ["Baseline", "random_like", "random_directions"],
        "persona_lens.core.stats": ["auroc", "pearson", "spearman"],
        # judges
        "persona_lens.judges.rule": ["RuleJudge"],
        "persona_lens.judges.cache": ["CachedJudge"],
        "persona_lens.judges.claude": ["ClaudeJudge"],
        "persona_lens.judges.local": ["LocalJudge"],
        "persona_lens.judges.factory": ["build_judges"],
        # experiments, one per CLI command
        "persona_lens.experiments.extract": ["ExtractConfig", "ExtractionResult", "extract"],
        "persona_lens.experiments.steering_sweep": ["SteeringSweepConfig", "SteeringSweepResult", "run_steering_sweep"],
        "persona_lens.experiments.monitor": ["generate_with_projections", "system_prompt_sweep", "many_shot_sweep"],
        "persona_lens.experiments.shift": ["ShiftStudy", "shift_study", "compute_shift"],
        "persona_lens.experiments.screen": ["ScreenConfig", "screen_dataset"],
        "persona_lens.experiments.finetune": ["FinetuneConfig", "FinetuneResult", "TrainingIntervention", "finetune"],
        "persona_lens.experiments.export": ["export_control_vector", "read_control_vector"],
        "persona_lens.experiments.space": [
            "SpaceConfig",
            "PersonaSpace",
            "CapSettings",
            "build_space",
            "axis_alignment",
            "project_conversation",
            "simulate_conversation",
            "compare_drift",
            "calibrate_cap",
            "apply_cap",
            "evaluate_capping",
        ],
        # figures
        "persona_lens.viz.figures": ["show", "write_figure"],
    },
)

if TYPE_CHECKING:
    from persona_lens.core.activations import collect_activations, contrast_vector
    from persona_lens.core.chat import (
        encode_conversation,
        encode_generated,
        encode_prompt,
        make_messages,
        read_chat_jsonl,
    )
    from persona_lens.core.controls import Baseline, random_directions, random_like
    from persona_lens.core.errors import Error
    from persona_lens.core.generation import generate
    from persona_lens.core.hooked_model import HookedLM
    from persona_lens.core.hooks import ablate, cap, record, steer
    from persona_lens.core.models import load_model
    from persona_lens.core.norms import median_residual_norms
    from persona_lens.core.stats import auroc, pearson, spearman
    from persona_lens.core.vectors import PersonaVector, load_vector, save_vector
    from persona_lens.experiments.export import export_control_vector, read_control_vector
    from persona_lens.experiments.extract import ExtractConfig, ExtractionResult, extract
    from persona_lens.experiments.finetune import FinetuneConfig, FinetuneResult, TrainingIntervention, finetune
    from persona_lens.experiments.monitor import generate_with_projections, many_shot_sweep, system_prompt_sweep
    from persona_lens.experiments.screen import ScreenConfig, screen_dataset
    from persona_lens.experiments.shift import ShiftStudy, compute_shift, shift_study
    from persona_lens.experiments.space import (
        CapSettings,
        PersonaSpace,
        SpaceConfig,
        apply_cap,
        axis_alignment,
        build_space,
        calibrate_cap,
        compare_drift,
        evaluate_capping,
        project_conversation,
        simulate_conversation,
    )
    from persona_lens.experiments.steering_sweep import SteeringSweepConfig, SteeringSweepResult, run_steering_sweep
    from persona_lens.judges.cache import CachedJudge
    from persona_lens.judges.claude import ClaudeJudge
    from persona_lens.judges.factory import build_judges
    from persona_lens.judges.local import LocalJudge
    from persona_lens.judges.rule import RuleJudge
    from persona_lens.traits.roles import load_roles
    from persona_lens.traits.schema import Trait, list_traits, load_trait
    from persona_lens.viz.figures import show, write_figure
