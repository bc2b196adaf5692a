#!/usr/bin/env bash
# The GPU checks, in one call on a lent GPU machine (its image has torch, triton, onnxruntime;
# archgen's other dependencies travel as wheels in .whl/, kept out of git -- fetch them with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection \
#     typing_extensions optuna==5.0.0 alembic colorlog Mako SQLAlchemy greenlet
# and name .whl in the device call's carry):
#   1. install archgen (non-editable) beside the image's torch;
#   2. the CUDA test module (tests/gpu): mixers fwd+bwd on the GPU vs their float64 loop
#      references, eager/compile backends on the GPU vs the float64 model, search measurement;
#   3. benchmarks/backends.py on CUDA: eager vs torch.compile (Inductor -> Triton) vs ORT;
#   4. benchmarks/bench_scan_cuda.py: Mamba-1 Triton vs chunked scan, forward and training.
# Logs and tables go to $OUT (default /tmp/gpu-check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
SITE=/tmp/archgen-site
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . || exit 1
export PYTHONPATH=$SITE
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c "import torch, triton, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), '| triton', triton.__version__, '| onnxruntime', ort.__version__, ort.get_available_providers())"
  nproc
} 2>&1 | tee "$OUT/env.txt"

# The tests import the installed archgen: run them from a copy, away from the source tree.
WORK=/tmp/gpu-tests && rm -rf "$WORK" && mkdir -p "$WORK"
cp -r tests examples pyproject.toml "$WORK"/
# PYTEST_K selects tests (pytest -k), e.g. PYTEST_K=triton
(cd "$WORK" && timeout "${TEST_TIMEOUT:-330}" python3 -m pytest tests/gpu -q -p no:cacheprovider \
  -o addopts="-ra" ${PYTEST_K:+-k "$PYTEST_K"} 2>&1) | tee "$OUT/pytest.log"

timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/backends.py --device cuda \
  --specs ${BENCH_SPECS:-transformer hybrid mamba2 scout_swa} --lengths 2048 --batch 8 \
  --rounds "${BENCH_ROUNDS:-3}" --repeats 10 --out "$OUT/backends_cuda.md" 2>&1 | tee "$OUT/bench.log"

# 4. Mamba-1 on the GPU: Triton scan vs chunked torch scan, forward and forward+backward.
timeout "${SCAN_BENCH_TIMEOUT:-120}" python3 -m benchmarks.bench_scan_cuda --lengths 1024,4096 \
  2>&1 | tee "$OUT/scan_cuda.md"
