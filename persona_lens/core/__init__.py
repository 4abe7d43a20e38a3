"""The core: models and their hook points, hooks, generation, activation reading, vectors, chat, io and statistics.

Nothing in ``core`` imports ``judges``, ``traits``, ``experiments``, ``viz``, ``cli`` or ``organism`` (import-linter
checks this in CI); named models outside the core (the organism) are reached through :mod:`persona_lens.core.registry`.
"""
