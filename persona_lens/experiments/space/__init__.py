"""Persona space (Lu et al. 2026, "The Assistant Axis"): role vectors, their PCA, the Assistant axis, drift over a
conversation, and activation capping along the axis calibrated from the default persona.

1. **Role vectors** (:func:`build_role_vector`, one resumable unit per role, so units can run in separate processes
   into one folder): replies to the shared questions under each of the role's system prompts, judged "in role" by
   the role's judge (through :func:`persona_lens.experiments.evaluate.evaluate_replies`, the one generate -> judge
   loop), the in-role and coherent ones kept; the role vector is the mean of their response-mean activations at
   every layer. The default role's kept replies are its activations. A role without a judge (``judge=None``: no rule
   under ``--judge rule``) keeps every coherent reply and says so (``judged: false``).
2. **The space** (:func:`fit_space`): per layer, PCA of the non-default role vectors (centred on their mean; the
   default role is *not* in the fit, so its place on PC1 is a finding, not a construction), variance explained and
   loadings; the **Assistant axis** = mean(default activations) - mean(role vectors). Each component's sign is chosen
   so the default role scores >= 0 on it.
3. **Alignment** (:func:`axis_alignment`): |cos(PC1, axis)| per layer beside the same number for seeded random
   directions (:mod:`persona_lens.core.controls`) and for the other components; the cosine of each role (centred)
   and each given trait vector with the axis and PC1.
4. **Drift** (:func:`project_conversation`): each assistant turn of a conversation projected on the axis (mean
   over the turn's response tokens, every layer) and per token (one layer); the drift (first turn minus last turn
   along the unit axis: positive = moving away from the Assistant) beside random directions; :func:`compare_drift`
   sets one conversation's drift beside a reference conversation's (paired, with its own random control).
5. **Capping** (:class:`CapSettings`, :func:`calibrate_cap`, :func:`apply_cap`): per-layer thresholds at a
   percentile of the default role's per-token projections, saved as one file; :func:`apply_cap` installs
   ``clamp(h . u_l, min=threshold_l)`` on a layer range (a handle that is also a context manager).
   :func:`evaluate_capping` measures in-role rates under role system prompts and persona-jailbreak prompts with and
   without capping, and how many default replies stay exactly the same.
6. **Capping control**: the same capping along seeded random directions (norm-matched to the axis, the same
   layers), each with thresholds at the same percentile of the default's per-token projections along *it*
   (:func:`cap_control_directions`; the space stores those projections' percentiles), evaluated beside the axis.

The package holds one module per topic: :mod:`.roles` (1), :mod:`.fit` (2, 3 and the capping candidates of 6),
:mod:`.drift` (4), :mod:`.capping` (5, 6) and :mod:`.storage` (the tensor files); every name is re-exported here, so
``from persona_lens.experiments.space import X`` works for each.
"""

# _token_projections, _token_quantiles and _encode_record are internal, re-exported for the tests that check them
from persona_lens.experiments.space.capping import (
    CapEvalResult,
    CapSettings,
    apply_cap,
    calibrate_cap,
    evaluate_capping,
)
from persona_lens.experiments.space.drift import (
    DriftResult,
    _token_projections,
    compare_drift,
    conversation_turns,
    project_conversation,
    simulate_conversation,
    turn_alone,
)
from persona_lens.experiments.space.fit import (
    DEFAULT_CAP_CONTROLS,
    PersonaSpace,
    SpanAlignment,
    _token_quantiles,
    axis_alignment,
    build_space,
    cap_control_directions,
    default_token_quantiles,
    fit_space,
    measure_pc1_in_span,
)
from persona_lens.experiments.space.report import DriftReport, SpaceReport, drift_report, space_report
from persona_lens.experiments.space.roles import (
    JudgePair,
    RoleNotPlayed,
    RoleVector,
    SpaceConfig,
    _encode_record,
    build_role_vector,
    load_role_vector,
    plan_role_jobs,
)

__all__ = [
    "SpaceConfig",
    "RoleNotPlayed",
    "RoleVector",
    "PersonaSpace",
    "CapSettings",
    "DriftResult",
    "CapEvalResult",
    "JudgePair",
    "plan_role_jobs",
    "build_role_vector",
    "load_role_vector",
    "fit_space",
    "build_space",
    "axis_alignment",
    "SpanAlignment",
    "measure_pc1_in_span",
    "default_token_quantiles",
    "cap_control_directions",
    "DEFAULT_CAP_CONTROLS",
    "conversation_turns",
    "turn_alone",
    "simulate_conversation",
    "project_conversation",
    "compare_drift",
    "calibrate_cap",
    "apply_cap",
    "evaluate_capping",
    "SpaceReport",
    "space_report",
    "DriftReport",
    "drift_report",
]
