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
# torch: a wheel pip already has on disk (find-links, a local index) first, offline; else, on a
# machine without an NVIDIA GPU, PyTorch's CPU index (PyPI's default build is the multi-GB CUDA
# one); else PyPI's CUDA build. ARCHGEN_TORCH=cuda|cpu forces the choice.
TORCH="torch==2.13.0"
choice=${ARCHGEN_TORCH:-auto}
# Offline means the torch wheel alone (--no-deps): its small dependencies come from the ordinary
# indexes with archgen's below, so a disk that holds torch but not, say, fsspec is still used
# (else pip would ask PyTorch's index for each of them, which may not be reachable).
if [[ $choice == auto ]] && .venv/bin/python -m pip install --quiet --no-index --no-deps "$TORCH" 2>/dev/null; then
  :
elif [[ $choice == cpu ]] || { [[ $choice == auto ]] && [[ ! -e /dev/nvidiactl ]] &&
  ! command -v nvidia-smi >/dev/null 2>&1; }; then
  .venv/bin/python -m pip install --quiet "$TORCH" --index-url https://download.pytorch.org/whl/cpu
else
  .venv/bin/python -m pip install --quiet "$TORCH"
fi
# hf: transformers, so the Hugging Face interop tests run (they skip without it)
.venv/bin/python -m pip install --quiet -e ".[dev,onnx,search,train,hf]"
