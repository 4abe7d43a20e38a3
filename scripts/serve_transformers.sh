#!/usr/bin/env bash
# Start a real OpenAI-compatible server (`transformers serve`, FastAPI + uvicorn) for a generation engine, wait until
# it answers, print its URL. Usage:  scripts/serve_transformers.sh MODEL [PORT]  (MODEL: a HF folder or id;
# "smollm2-135m-instruct" = the embedded default, converted once). Stop it with: kill "$(cat PIDFILE)"; the pid file
# is $SERVE_PIDFILE (default /tmp/persona_lens_serve_PORT.pid) and the log beside it (.log).
# Needs `pip install 'persona_lens[engine]'` (transformers' serving extra: fastapi, uvicorn, openai).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
model=${1:?usage: scripts/serve_transformers.sh MODEL [PORT]}
port=${2:-8765}
pidfile=${SERVE_PIDFILE:-/tmp/persona_lens_serve_$port.pid}
log=${pidfile%.pid}.log
if [ "$model" = "smollm2-135m-instruct" ]; then
  model=$("$python" -c "from persona_lens.core.models import smollm2_folder; print(smollm2_folder())")
fi
bin=$(dirname "$python")/transformers
"$bin" serve --host 127.0.0.1 --port "$port" --device "${SERVE_DEVICE:-cpu}" --dtype "${SERVE_DTYPE:-float32}" \
  "$model" >"$log" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 ${SERVE_WAIT_S:-600}); do
  if "$python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/v1/models', timeout=2)" \
      2>/dev/null; then
    echo "http://127.0.0.1:$port"; exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "server died; log: $log" >&2; tail -20 "$log" >&2; exit 1; fi
  sleep 1
done
echo "server did not answer in ${SERVE_WAIT_S:-600} s; log: $log" >&2; kill "$(cat "$pidfile")"; exit 1
