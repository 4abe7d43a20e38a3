"""Traits and roles as data: the schemas and their loaders (:mod:`.schema`, :mod:`.roles`), and their generation
with Claude (:mod:`.generate`). The names below are re-exported lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from persona_lens.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "persona_lens.traits.schema": [
            "SCHEMA_VERSION",
            "TRAITS_ENV",
            "ManyShotExample",
            "PromptPair",
            "Trait",
            "TraitError",
            "list_traits",
            "load_trait",
            "save_trait",
            "trait_from_dict",
            "trait_to_dict",
            "traits_dirs",
        ],
        "persona_lens.traits.roles": [
            "Role",
            "RoleSet",
            "RoleQuestions",
            "RoleError",
            "list_roles",
            "load_role",
            "load_roles",
            "list_role_sets",
            "save_role",
        ],
        "persona_lens.traits.generate": ["generate_trait", "generate_role", "TraitGenerationError"],
    },
)

if TYPE_CHECKING:
    from persona_lens.traits.generate import TraitGenerationError, generate_role, generate_trait
    from persona_lens.traits.roles import (
        Role,
        RoleError,
        RoleQuestions,
        RoleSet,
        list_role_sets,
        list_roles,
        load_role,
        load_roles,
        save_role,
    )
    from persona_lens.traits.schema import (
        SCHEMA_VERSION,
        TRAITS_ENV,
        ManyShotExample,
        PromptPair,
        Trait,
        TraitError,
        list_traits,
        load_trait,
        save_trait,
        trait_from_dict,
        trait_to_dict,
        traits_dirs,
    )
