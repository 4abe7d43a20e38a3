"""Traits as data: the schema and its loader (:mod:`.schema`), and trait generation with Claude (:mod:`.generate`)."""

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

__all__ = ["SCHEMA_VERSION", "TRAITS_ENV", "ManyShotExample", "PromptPair", "Trait", "TraitError", "list_traits",
           "load_trait", "save_trait", "trait_from_dict", "trait_to_dict", "traits_dirs"]
