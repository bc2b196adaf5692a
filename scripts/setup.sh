#!/usr/bin/env bash
# Create .venv and install archgen with its test and optional CPU extras. Idempotent.
# torch is pinned to the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# hf: transformers, so the Hugging Face interop tests run (they skip without it)
.venv/bin/python -m pip install --quiet -e ".[dev,onnx,search,train,hf]"
