#!/usr/bin/env bash
# Builds flatcoat._core with AddressSanitizer + UndefinedBehaviorSanitizer and
# runs the test suite against it.
#
#   tests/sanitize.sh            full suite minus the encoder tests (onnxruntime
#                                is not built with ASan; those tests exercise the
#                                same core through DenseIndex/MultiVectorIndex)
#   tests/sanitize.sh --quick    core, dense, persistence, bad input, multi-vector and
#                                the loader/stateful fuzz tests with fewer examples
#   extra arguments are passed to pytest (e.g. -x, -k name)
#
# The build lives in build/asan (override with FLATCOAT_ASAN_BUILD); the package
# and the sanitized _core are copied into a temporary directory, so the
# development build and anyone's running process are untouched. Any ASan or
# UBSan report aborts the process (abort_on_error / halt_on_error), which fails
# the run; the script also greps the log for reports and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
  QUICK=1
  shift
fi

BUILD=${FLATCOAT_ASAN_BUILD:-build/asan}
PYTHON=${PYTHON:-python}
PYBIND11_DIR=$("$PYTHON" -c 'import pybind11; print(pybind11.get_cmake_dir())')
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DFLATCOAT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFLATCOAT_CUDA=OFF -Dpybind11_DIR="$PYBIND11_DIR" -DPython_EXECUTABLE="$(command -v "$PYTHON")"
fi
start_build=$(date +%s)
cmake --build "$BUILD" -j"$(nproc)"
echo "sanitized build: $(( $(date +%s) - start_build )) s"

PKG=$(mktemp -d "${TMPDIR:-/tmp}/flatcoat-asan.XXXXXX")
LOG="$PKG/pytest.log"
cleanup() { rm -rf "$PKG"; }
trap cleanup EXIT
cp -r python/flatcoat "$PKG/"
rm -f "$PKG"/flatcoat/_core*.so
cp "$BUILD"/_core*.so "$PKG/flatcoat/"

# An editable install (pip install -e .) imports flatcoat through a finder on
# sys.meta_path that outranks PYTHONPATH: drop it, here and in subprocesses.
cat > "$PKG/sitecustomize.py" <<'EOF_SITE'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable_")]
EOF_SITE
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Python's own allocations are not instrumented and it never frees some of them
# at exit, so leak checking would only report the interpreter.
# Reports also go to files (log_path), so one from a subprocess that a test
# spawns (the crash-safety and mmap-sharing tests) is not lost in its captured stderr.
REPORTS="$PKG/reports"
mkdir -p "$REPORTS"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}:log_path=$REPORTS/asan
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}:log_path=$REPORTS/ubsan

# The sanitized module must be the one that is imported.
"$PYTHON" - "$PKG" <<'EOF'
import sys, flatcoat
assert flatcoat._core.__file__.startswith(sys.argv[1]), flatcoat._core.__file__
print("sanitized core:", flatcoat._core.__file__, flatcoat.info()["isa"])
EOF

if [[ $QUICK == 1 ]]; then
  export FLATCOAT_FUZZ_EXAMPLES=${FLATCOAT_FUZZ_EXAMPLES:-60}
  export FLATCOAT_STATEFUL_EXAMPLES=${FLATCOAT_STATEFUL_EXAMPLES:-8}
  TESTS=(tests/test_core.py tests/test_dense.py tests/test_persistence.py tests/test_bad_input.py tests/test_multivector.py
         tests/test_fuzz_loader.py tests/test_stateful.py)
else
  TESTS=(tests --ignore=tests/test_encoders.py --ignore=tests/test_retriever.py --ignore=tests/test_cli.py)
fi

start=$(date +%s)
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))
if compgen -G "$REPORTS/*" >/dev/null; then
  cat "$REPORTS"/* >&2
  echo "sanitize.sh: a sanitizer report appeared (see above)" >&2
  [[ $status == 0 ]] && status=1
fi
mode=$([[ $QUICK == 1 ]] && echo quick || echo full)
echo "sanitize.sh ($mode): pytest exit $status in ${elapsed} s"
exit "$status"
