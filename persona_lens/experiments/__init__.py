"""Experiments of the method, built on the core: extract, steering_sweep, monitor, shift, screen, finetune, export,
space; ``evaluate`` is the loop they share to generate replies, judge them and average the scores.

Each returns plain dataclasses and writes its own append-only records; each result that a CLI command reports
saves and loads its whole folder (``save(folder)`` / ``load(folder)``), and figures are drawn from a loaded result
by :mod:`persona_lens.viz`.

The names below are the experiments' public API, re-exported lazily. The functions ``extract`` and ``finetune``
share their module's name, so they are exported from :mod:`persona_lens` (``persona_lens.extract``,
``persona_lens.finetune``) rather than from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "persona_lens.experiments.evaluate": [
            "GenerationSettings",
            "Steering",
            "ScoreSummary",
            "generate_replies",
            "judge_replies",
            "evaluate_replies",
        ],
        "persona_lens.experiments.executor": [
            "Executor",
            "SerialExecutor",
            "RayExecutor",
            "EngineExecutor",
            "WorkerLost",
        ],
        "persona_lens.experiments.extract": [
            "ExtractConfig",
            "ExtractionResult",
            "cosine_matrix",
            "trait_cosines",
            "TraitCosines",
            "vector_path",
        ],
        "persona_lens.experiments.steering_sweep": [
            "SteeringSweepConfig",
            "SteeringCell",
            "SteeringSweepResult",
            "run_steering_sweep",
            "choose_layer",
            "default_layers",
            "SteeringControls",
            "run_steering_controls",
        ],
        "persona_lens.experiments.monitor": [
            "ProjectionSweepResult",
            "TokenTrace",
            "TokenProjections",
            "generate_with_projections",
            "system_prompt_sweep",
            "many_shot_sweep",
            "project_last_prompt",
        ],
        "persona_lens.experiments.shift": [
            "ShiftResult",
            "ShiftStudy",
            "TraitEvaluation",
            "compute_shift",
            "evaluate_trait",
            "shift_study",
        ],
        "persona_lens.experiments.screen": [
            "ScreenConfig",
            "DatasetComparison",
            "screen_dataset",
            "compare_datasets",
            "export_ranked",
            "load_scores",
        ],
        "persona_lens.experiments.screen_result": ["ScreenResult", "screen_datasets"],
        "persona_lens.experiments.finetune": [
            "FinetuneConfig",
            "FinetuneResult",
            "TrainingIntervention",
            "NonFiniteLossError",
            "save_model",
        ],
        "persona_lens.experiments.export": [
            "export_control_vector",
            "read_control_vector",
            "export_npz",
            "import_npz",
            "VectorExport",
            "export_vector",
        ],
        "persona_lens.experiments.space": [
            "SpaceConfig",
            "RoleNotPlayed",
            "RoleVector",
            "PersonaSpace",
            "CapSettings",
            "DriftResult",
            "CapEvalResult",
            "build_space",
            "axis_alignment",
            "project_conversation",
            "simulate_conversation",
            "compare_drift",
            "calibrate_cap",
            "apply_cap",
            "evaluate_capping",
        ],
    },
)

if TYPE_CHECKING:
    from persona_lens.experiments.evaluate import (
        GenerationSettings,
        ScoreSummary,
        Steering,
        evaluate_replies,
        generate_replies,
        judge_replies,
    )
    from persona_lens.experiments.executor import EngineExecutor, Executor, RayExecutor, SerialExecutor, WorkerLost
    from persona_lens.experiments.export import (
        VectorExport,
        export_control_vector,
        export_npz,
        export_vector,
        import_npz,
        read_control_vector,
    )
    from persona_lens.experiments.extract import (
        ExtractConfig,
        ExtractionResult,
        TraitCosines,
        cosine_matrix,
        trait_cosines,
        vector_path,
    )
    from persona_lens.experiments.finetune import (
        FinetuneConfig,
        FinetuneResult,
        NonFiniteLossError,
        TrainingIntervention,
        save_model,
    )
    from persona_lens.experiments.monitor import (
        ProjectionSweepResult,
        TokenProjections,
        TokenTrace,
        generate_with_projections,
        many_shot_sweep,
        project_last_prompt,
        system_prompt_sweep,
    )
    from persona_lens.experiments.screen import (
        DatasetComparison,
        ScreenConfig,
        compare_datasets,
        export_ranked,
        load_scores,
        screen_dataset,
    )
    from persona_lens.experiments.screen_result import ScreenResult, screen_datasets
    from persona_lens.experiments.shift import (
        ShiftResult,
        ShiftStudy,
        TraitEvaluation,
        compute_shift,
        evaluate_trait,
        shift_study,
    )
    from persona_lens.experiments.space import (
        CapEvalResult,
        CapSettings,
        DriftResult,
        PersonaSpace,
        RoleNotPlayed,
        RoleVector,
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
    from persona_lens.experiments.steering_sweep import (
        SteeringCell,
        SteeringControls,
        SteeringSweepConfig,
        SteeringSweepResult,
        choose_layer,
        default_layers,
        run_steering_controls,
        run_steering_sweep,
    )
