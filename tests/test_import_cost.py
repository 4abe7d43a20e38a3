"""``import persona_lens`` and the CLI's parser load none of the heavy libraries (what keeps ``--help`` fast).

A behaviour check in a fresh interpreter, not a timing threshold (``benchmarks/cli_startup.py`` measures the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "transformer_lens")


def _heavy_modules_after(code: str) -> list[str]:
    """The heavy top-level modules loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import persona_lens",
        "import persona_lens.core, persona_lens.judges, persona_lens.traits, persona_lens.experiments, persona_lens.viz",
        "from persona_lens import Error; import persona_lens.cli",  # the CLI catches persona_lens.Error
        "import persona_lens.cli; persona_lens.cli.build_parser()",
        "import persona_lens.cli.sweep; persona_lens.cli.sweep.build_parser()",
    ],
)
def test_import_and_cli_parser_load_no_heavy_library(code):
    assert _heavy_modules_after(code) == []
