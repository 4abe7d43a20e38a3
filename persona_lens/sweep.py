"""``python -m persona_lens.sweep``: the steering sweep from the shell (the CLI lives in :mod:`persona_lens.cli.sweep`).

With no arguments it runs the embedded default job (SmolLM2-135M-Instruct, the ``enthusiastic`` trait, CPU, offline).
"""

from persona_lens.cli.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
