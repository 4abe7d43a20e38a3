#!/usr/bin/env bash
# The GPU part of the benchmarks, as one script for one device-tool call (see benchmarks/RESULTS.md):
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"])
# .whl holds the wheels the device image lacks (transformer-lens and what it imports, and the transformers /
# huggingface_hub versions we test with); outputs go to $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
SHAPE=${SHAPE:-qwen2-7b}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import torch, transformers, transformer_lens; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
$PY benchmarks/activations.py --random "$SHAPE" --device "${DEVICE:-cuda}" --batch 16 --tokens 256 2>&1 \
  | grep -v "^W[0-9]" | tee "$OUT/activations.txt"
$PY benchmarks/activations.py --random "$SHAPE" --device "${DEVICE:-cuda}" --batch 4 --tokens 1024 2>&1 \
  | grep -v "^W[0-9]" | tee -a "$OUT/activations.txt"
$PY benchmarks/generation.py --random "$SHAPE" ${GEN_ARGS:-} 2>&1 | grep -v "^W[0-9]" | tee "$OUT/generation.txt"
