"""The README quickstart, run verbatim (extracted between its markers), so README and code cannot drift."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.quickstart import readme_quickstart

ROOT = Path(__file__).resolve().parent.parent


def test_the_quickstart_block_is_found_verbatim():
    code = readme_quickstart()
    assert code.startswith("import persona_lens as pl\n")
    assert "pl.steer(" in code and "format_tokens(" in code
    compile(code, "README.md quickstart", "exec")


@pytest.mark.slow
def test_readme_quickstart_steers_visibly_and_prints_token_projections(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(readme_quickstart(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert process.returncode == 0, process.stderr[-3000:]
    out = process.stdout
    scores = dict(re.findall(r"^(unsteered|steered|random direction), pirate score (\d+):", out, flags=re.M))
    assert set(scores) == {"unsteered", "steered", "random direction"}, out
    assert int(scores["steered"]) > int(scores["unsteered"]), out  # the steering visibly changes the reply
    assert int(scores["steered"]) > int(scores["random direction"]), out  # ... and not by any push of that size
    table = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+(-?\d+\.\d{3}|n/a)\s", line)]
    assert len(table) >= 10, out  # one readable line per token: position, projection, bar, token
    assert all("'" in line or '"' in line for line in table)  # ... with the token text
