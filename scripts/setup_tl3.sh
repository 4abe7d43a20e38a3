#!/usr/bin/env bash
# A second test environment: persona_lens on TransformerLens 3.x (HookedTransformer) with its transformers, then the
# hook / activation / record tests that run on a HookedTransformer built from a config (pytest marker `tl3`).
#
#   bash scripts/setup_tl3.sh            # venv in .venv-tl3 (git-ignored), then the tests
#   VENV=/some/dir bash scripts/setup_tl3.sh
#
# persona_lens is installed the way a TL 3.x user would install it, into an environment that already holds
# TransformerLens 3.9: the install must keep that TransformerLens (checked below). Idempotent like setup.sh: a rerun
# with unchanged pyproject.toml / constraints skips the install. torch is the CPU build from constraints-cpu.txt on a
# machine without an NVIDIA GPU (no multi-GB CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv-tl3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
constraints=(-c constraints-tl3.txt)
if ! command -v nvidia-smi >/dev/null 2>&1; then constraints+=(-c constraints-cpu.txt); fi
stamp=$venv/.persona_lens_setup
want=$(cat pyproject.toml constraints-cpu.txt constraints-tl3.txt | sha256sum | cut -d' ' -f1)-${#constraints[@]}
if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$SECONDS
  # First the user's environment: TransformerLens 3.x and its transformers ...
  "$venv/bin/python" -m pip install -q "${constraints[@]}" transformer-lens transformers pytest
  # ... then persona_lens into it, without constraints: its own pins must accept what is there.
  tl_before=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("transformer-lens"))')
  "$venv/bin/python" -m pip install -q -e .
  tl_after=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("transformer-lens"))')
  if [ "$tl_before" != "$tl_after" ]; then
    echo "installing persona_lens changed transformer-lens $tl_before -> $tl_after" >&2
    exit 1
  fi
  echo "TL 3.x environment installed in $((SECONDS - start)) s"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import importlib.metadata as m; print("transformer-lens", m.version("transformer-lens"), "transformers", m.version("transformers"), "torch", m.version("torch"))'
start=$SECONDS
"$venv/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" -m tl3 tests/core/test_tl3.py
echo "TL 3.x tests ran in $((SECONDS - start)) s"
