"""CPU cost of the CLI's ``--help``, side by side with ``import torch``.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]

Each command runs ``--runs`` times in a fresh interpreter (the commands take turns, so load on a shared machine
falls on all of them alike). CPU is the child's user + system time (``getrusage(RUSAGE_CHILDREN)`` before and
after); medians are printed, with each command's ratio to ``import torch``. Target: < 1.5 s CPU per ``--help``
(6-7 s before the package re-exported its names lazily and the CLI imported torch only to run a command).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_CPU_S = 1.5
REFERENCE = ('python -c "import torch"', [sys.executable, "-c", "import torch"])
COMMANDS = [
    ("python -m persona_lens --help", [sys.executable, "-m", "persona_lens", "--help"]),
    ("python -m persona_lens.sweep --help", [sys.executable, "-m", "persona_lens.sweep", "--help"]),
]


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    commands = [REFERENCE, *COMMANDS]
    cpu: dict[str, list[float]] = {label: [] for label, _ in commands}
    wall: dict[str, list[float]] = {label: [] for label, _ in commands}
    for _ in range(args.runs):
        for label, argv in commands:
            run_cpu, run_wall = measure(argv, env)
            cpu[label].append(run_cpu)
            wall[label].append(run_wall)
    reference = statistics.median(cpu[REFERENCE[0]])
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.runs} runs each, medians; CPU = user + sys of the child"
    )
    print(f"{'command':<38}{'CPU s':>8}{'wall s':>9}{'CPU / torch':>14}")
    for label, _ in commands:
        median_cpu = statistics.median(cpu[label])
        print(f"{label:<38}{median_cpu:>8.2f}{statistics.median(wall[label]):>9.2f}{median_cpu / reference:>14.2f}")
    worst = max(statistics.median(cpu[label]) for label, _ in COMMANDS)
    verdict = "met" if worst < TARGET_CPU_S else "NOT met"
    print(f"target < {TARGET_CPU_S} s CPU per --help: {verdict} (slowest {worst:.2f} s)")


if __name__ == "__main__":
    main()
