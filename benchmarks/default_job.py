"""Wall time of the README's first command's job, ``python -m persona_lens.sweep`` with no arguments, from a clean
clone: extraction, sweep, controls, and every judge pass, with nothing left from earlier runs.

    .venv/bin/python benchmarks/default_job.py [--keep] [-- extra sweep arguments]

Clones this repository's HEAD into a temporary folder (``git clone``: committed files only, no runs/, no judge cache,
no calibration), then runs the job there with this interpreter (its packages stand in for ``scripts/setup.sh``'s
.venv; the converted SmolLM2 in the model cache is reused, as after setup). Prints the wall time beside the CPU
time of the child and the load average before and after (a shared machine stretches wall time), the longest time
the job's progress output (stderr) stayed silent, the slowest phases (the longest gaps between bar updates, by
bar), and the job's own summary. Target (issue 23): at most 5 minutes on an idle 2-core machine; no bar silent for
over a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 300
SILENCE_S = 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone (its runs/ folder) and print where")
    parser.add_argument("extra", nargs="*", help="arguments passed to the sweep (after --)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="default-job-"))
    clone = scratch / "persona_lens"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PYTHONPATH": str(clone), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "persona_lens.sweep", *args.extra],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stamps: list[tuple[float, str]] = []

    def read_stderr() -> None:  # progress bars redraw with \r: every redraw is an update
        buffer = b""
        assert process.stderr is not None
        while chunk := process.stderr.read1(4096):
            now = time.perf_counter() - started
            buffer += chunk
            parts = re.split(rb"[\r\n]", buffer)
            buffer = parts.pop()
            stamps.extend((now, p.decode(errors="replace")) for p in parts if p.strip())

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = process.stdout.read().decode(errors="replace") if process.stdout else ""
    process.wait()
    reader.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    times = [0.0, *(t for t, _ in stamps), wall]
    gaps = sorted(((b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))), reverse=True)
    print(
        f"default job (python -m persona_lens.sweep {' '.join(args.extra)}) from a clean clone: wall {wall:.0f} s "
        f"(target {TARGET_S} s: {wall / TARGET_S:.2f}x), CPU {cpu:.0f} s, {os.cpu_count()} cores, load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after, exit {process.returncode}"
    )
    print(f"longest silence of the progress output: {gaps[0][0]:.0f} s (limit {SILENCE_S} s)")
    for gap, i in gaps[:5]:
        line = stamps[i][1] if i < len(stamps) else "(end)"
        print(f"  {gap:6.1f} s before: {line[:110]}")
    print(stdout)
    if process.returncode:
        print("\n".join(s for _, s in stamps[-20:]), file=sys.stderr)
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
