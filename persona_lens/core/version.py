"""The library's version, the one place it is written besides ``pyproject.toml`` (a test keeps the two equal).

Kept in the core so that modules recording it (vector files' metadata) never import the root package."""

__version__ = "0.1.0"
