"""Wall time of the README quickstart, pasted verbatim into a script and run from nothing.

    .venv/bin/python benchmarks/quickstart.py [--keep-model-cache]

The code block between ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->`` in README.md runs in a fresh
interpreter, in an empty folder, with an empty model cache (``PERSONA_LENS_CACHE``), so the one-time GGUF conversion
of SmolLM2 counts too (``--keep-model-cache`` leaves it out). Prints the wall time beside CPU time (user + system
of the child) and the load average before and after, since a shared machine stretches wall time; then the
quickstart's own output. Target (issue 14): under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
TARGET_S = 300


def readme_quickstart(readme: Path = ROOT / "README.md") -> str:
    """The Python code of the README's quickstart block, verbatim."""
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"{readme} needs exactly one {BEGIN} ... {END} block")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if not (block.startswith("```python\n") and block.endswith("```")):
        raise ValueError(f"the quickstart block in {readme} is not one ```python fenced block")
    return block[len("```python\n") : -3]


def run_quickstart(workdir: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run the quickstart in ``workdir``; returns (process, wall seconds, CPU seconds)."""
    script = workdir / "quickstart.py"
    script.write_text(readme_quickstart(), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return process, wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-model-cache", action="store_true", help="reuse the converted SmolLM2 (no conversion)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quickstart-") as scratch:
        workdir = Path(scratch)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if not args.keep_model_cache:
            env["PERSONA_LENS_CACHE"] = str(workdir / "model-cache")
        load_before = os.getloadavg()
        process, wall, cpu = run_quickstart(workdir, env)
        load_after = os.getloadavg()
    print(
        f"README quickstart: wall {wall:.0f} s (target {TARGET_S} s: {wall / TARGET_S:.2f}x), CPU {cpu:.0f} s, "
        f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after, "
        f"model cache {'kept' if args.keep_model_cache else 'empty (conversion included)'}, "
        f"exit {process.returncode}"
    )
    print(process.stdout)
    if process.returncode:
        print(process.stderr[-4000:], file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
