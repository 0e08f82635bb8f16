#!/usr/bin/env bash
# One command for a GPU machine: build flatcoat with CUDA, run the GPU tests,
# then the GPU benchmarks next to PyTorch on the same card (bench/gpu_bench.py).
# Budget: under 8 minutes on an H100 (build ~2-3 min on 16 cores, tests, benchmarks).
#
#   bench/gpu_check.sh [output-dir]
#
# Output (default bench/results/gpu-<date>, or $OUT when set): cmake.log,
# build.log, tests.log, isa_tests.log, gpu_bench.md + gpu_maxsim.md (the tables for BENCHMARKS.md),
# gpu_bench.json, gpu_maxsim.json.
# Needs nvcc, cmake, ninja, and pybind11, numpy, pytest for the Python that runs
# it ($PYTHON, default python3); the benchmarks need CuPy, and PyTorch for the
# peer column (each is skipped with a message when missing). Installs nothing:
# the extensions are built into build/gpu-check and staged beside a copy of
# python/flatcoat, so the checkout is left as it was.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-$ROOT/bench/results/gpu-$(date +%Y%m%d-%H%M%S)}}
BUILD=$ROOT/build/gpu-check
STAGE=$BUILD/stage
START=$(date +%s)
mkdir -p "$OUT_DIR"
log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }

log "card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
log "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"

log "configuring (FLATCOAT_CUDA=ON)"
if ! cmake -S "$ROOT" -B "$BUILD" -G Ninja -DFLATCOAT_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PY")" \
    -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" >"$OUT_DIR/cmake.log" 2>&1; then
  tail -40 "$OUT_DIR/cmake.log"; log "configure failed"; exit 1
fi
log "building"
if ! cmake --build "$BUILD" -j "$(nproc)" >"$OUT_DIR/build.log" 2>&1; then
  tail -60 "$OUT_DIR/build.log"; log "build failed"; exit 1
fi
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -r "$ROOT/python/flatcoat" "$STAGE/"
rm -f "$STAGE"/flatcoat/*.so
cp "$BUILD"/_core*.so "$BUILD"/cpp/cuda/_cuda*.so "$STAGE/flatcoat/"
export PYTHONPATH=$STAGE PYTHONUNBUFFERED=1
if ! "$PY" -c "import flatcoat.cuda as c; c.require(); print('device:', c._extension()[0].device_name(0))"; then
  log "the CUDA extension does not run here"; exit 1
fi

log "GPU tests"
"$PY" -m pytest tests/test_cuda.py tests/test_cuda_maxsim.py tests/test_cuda_encoders.py -q -p no:cacheprovider -rs >"$OUT_DIR/tests.log" 2>&1
TESTS_RC=$?
tail -15 "$OUT_DIR/tests.log"

# The host's CPU may have AVX-512 or AMX that no other machine of ours has:
# every level it supports, forced one at a time, against the references.
log "host CPU: $("$PY" -c 'import flatcoat; i = flatcoat.info(); print(i["detected_isa"], i["cpu_features"])')"
log "forced-ISA tests"
"$PY" -m pytest tests/test_core.py tests/test_int8_kernel.py tests/test_dense.py -q -p no:cacheprovider -rs \
  >"$OUT_DIR/isa_tests.log" 2>&1
ISA_RC=$?
tail -5 "$OUT_DIR/isa_tests.log"
[ "$TESTS_RC" -eq 0 ] && TESTS_RC=$ISA_RC

log "benchmarks"
timeout 240 "$PY" bench/gpu_bench.py --out "$OUT_DIR/gpu_bench.md" --json "$OUT_DIR/gpu_bench.json"
BENCH_RC=$?

log "MaxSim and encoder benchmarks"
timeout 150 "$PY" bench/gpu_maxsim.py --out "$OUT_DIR/gpu_maxsim.md" --json "$OUT_DIR/gpu_maxsim.json"
MAXSIM_RC=$?
[ "$BENCH_RC" -eq 0 ] && BENCH_RC=$MAXSIM_RC

log "done: tests exit $TESTS_RC, benchmarks exit $BENCH_RC; results in $OUT_DIR"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
