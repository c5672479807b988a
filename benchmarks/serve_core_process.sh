#!/usr/bin/env bash
# folo serve with the engine core on a thread of the server (--engine-core-in-process) and in a
# process of its own (the default), alternating, 2 passes; benchmarks/serve.py results go to
# $OUT/serve-{thread,proc}-{inf,r4}-{pass}.json (docs/benchmarks.md, "Serving").
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-/tmp}"
export FOLO_LOGGING_LEVEL=WARNING
for pass in 1 2; do
  for mode in thread proc; do
    flag=""; [ $mode = thread ] && flag="--engine-core-in-process"
    $PY -m folo_core.entrypoints.cli serve --port 8123 --uvicorn-log-level warning $flag > $OUT/serve-$mode.log 2>&1 &
    pid=$!
    for i in $(seq 1 300); do curl -sf http://127.0.0.1:8123/health >/dev/null && break; sleep 1; done
    $PY benchmarks/serve.py --base-url http://127.0.0.1:8123 --num-prompts 32 --input-len 128 --output-len 64 \
        --request-rate inf --seed $((pass*10)) --result-json $OUT/serve-$mode-inf-$pass.json > /dev/null 2>&1
    $PY benchmarks/serve.py --base-url http://127.0.0.1:8123 --num-prompts 32 --input-len 128 --output-len 64 \
        --request-rate 4 --max-concurrency 16 --seed $((pass*10+1)) --result-json $OUT/serve-$mode-r4-$pass.json > /dev/null 2>&1
    kill $pid; wait $pid
    echo "pass $pass $mode done $(date +%T)"
  done
done
