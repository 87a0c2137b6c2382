#!/usr/bin/env bash
# minilm GPU check, in one go, on a machine with an NVIDIA GPU and CuPy (well under 5 minutes):
#   1. nvidia-smi -L and the CuPy version
#   2. the CUDA tests:  MINILM_TEST_DEVICES=cuda python -m pytest -q -x tests -k cuda
#   3. the quick engine benchmark on "cuda" (JSON into the output folder)
# Everything printed is also written to ${OUT:-out/benchmarks}/gpu_check.log.
# Run from the repository root:   bash benchmarks/gpu_check.sh
# Exit status: non-zero if the tests failed (or none ran), or if the benchmark failed;
# the benchmark runs even after a test failure.
set -uo pipefail

PY="${PYTHON:-python}"
OUT_DIR="${OUT:-out/benchmarks}"
mkdir -p "$OUT_DIR" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 2; }
OUT_DIR="$(cd "$OUT_DIR" && pwd)"             # absolute, so the cd below cannot move it
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2   # the repository root
LOG="$OUT_DIR/gpu_check.log"

run_checks() {
    local pytest_rc bench_rc
    echo "== minilm gpu_check  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "== python: $("$PY" --version 2>&1)"
    echo "== nvidia-smi -L"
    nvidia-smi -L || echo "(nvidia-smi failed: rc $?)"
    echo "== cupy"
    "$PY" -c 'import cupy; print("cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "|", cupy.cuda.runtime.getDeviceCount(), "device(s)")' \
        || echo "(cupy import failed: rc $?)"

    echo
    echo "== tests: MINILM_TEST_DEVICES=cuda $PY -m pytest -q -x tests -k cuda"
    export MINILM_TEST_DEVICES=cuda
    timeout 180 "$PY" -m pytest -q -x tests -k "cuda"
    pytest_rc=$?
    case $pytest_rc in
        0) echo "== tests passed" ;;
        5) echo "== tests: none collected with -k cuda (pytest rc 5) -- counted as a failure" ;;
        124) echo "== tests: stopped after 180 s (timeout) -- counted as a failure" ;;
        *) echo "== tests FAILED (pytest rc $pytest_rc)" ;;
    esac

    echo
    echo "== benchmark: $PY benchmarks/bench_engine.py --device cuda --quick --out $OUT_DIR"
    timeout 100 "$PY" benchmarks/bench_engine.py --device cuda --quick --out "$OUT_DIR"
    bench_rc=$?
    [ "$bench_rc" -eq 0 ] && echo "== benchmark finished" || echo "== benchmark FAILED (rc $bench_rc)"

    echo
    echo "== summary: pytest rc $pytest_rc, benchmark rc $bench_rc; log $LOG"
    if [ "$pytest_rc" -ne 0 ]; then return 1; fi
    if [ "$bench_rc" -ne 0 ]; then return 3; fi
    return 0
}

run_checks 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
