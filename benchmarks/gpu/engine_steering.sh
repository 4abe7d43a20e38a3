#!/usr/bin/env bash
# The GPU variant of benchmarks/engine_steering.py, as one script for one device-tool call, on a machine whose image
# already holds vLLM (the CUDA `vllm` 0.32 wheel and its torch are far beyond what a call can carry):
#   run(command="bash benchmarks/gpu/engine_steering.sh", carry=[".whl"])
# MODEL: the largest model the GPU's disk holds (default Qwen2.5-7B-Instruct, bf16). Outputs go to $OUT.
# Not run yet: no GPU was lent to the session that wrote it (benchmarks/results/vllm.md).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
$PY -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" 2>&1 | tee "$OUT/env.txt" \
  || { echo "vLLM is not installed on this machine: the GPU benchmark needs an image with vllm" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$OUT/env.txt"
$PY benchmarks/engine_steering.py --model "$MODEL" --device cuda --dtype bfloat16 --batches 1 16 64 \
  --tokens 128 --reads 256 2>&1 | grep -v "^W[0-9]" | tee "$OUT/engine_steering.txt"
