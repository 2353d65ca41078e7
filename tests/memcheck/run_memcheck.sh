#!/usr/bin/env bash
# Run a subset of the engine grid (tests/memcheck/grid.py) under valgrind memcheck, once
# per instruction-set path of the element-wise kernels that valgrind can run (baseline
# and AVX2; valgrind does not emulate AVX-512), with 2 OpenMP threads.
#
#   tests/memcheck/run_memcheck.sh [PYTHON]      # default .venv/bin/python; about 1.5 minutes
#   tests/memcheck/run_memcheck.sh --selftest [PYTHON]
#                   # a deliberate out-of-bounds read in the kernel: must be reported (exit 1)
#
# PYTHONMALLOC=malloc makes every Python allocation a malloc that memcheck tracks (numpy
# arrays are malloc'ed anyway), so reads and writes past any buffer the kernels get
# are caught, in the kernels and in the BLAS and OpenMP code they call. Reports that do
# not involve rnnfast's compiled core (CPython, numpy, ld.so noise) are counted and
# left out by filter_log.py; definite leaks are reported too (allocations the kernels
# never free). Exits non-zero if the grid fails or any report involves the core.
# Logs: build/memcheck-<isa>.log
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = "--selftest" ]; then
    PY=${2:-.venv/bin/python}
    mkdir -p build
    PYTHONMALLOC=malloc valgrind --tool=memcheck --num-callers=50 --log-file=build/memcheck-selftest.log \
        "$PY" tests/memcheck/grid.py --selftest-read
    if "$PY" tests/memcheck/filter_log.py build/memcheck-selftest.log; then
        echo "selftest FAILED: the out-of-bounds read was not reported"; exit 1
    fi
    echo "selftest passed: the out-of-bounds read was reported"; exit 0
fi
PY=${1:-.venv/bin/python}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
mkdir -p build
status=0
logs=()
for isa in baseline avx2; do
    log=build/memcheck-$isa.log
    logs+=("$log")
    echo "== RNNFAST_ISA=$isa: valgrind memcheck on tests/memcheck/grid.py"
    PYTHONMALLOC=malloc OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 RNNFAST_ISA=$isa \
        valgrind --tool=memcheck --error-limit=no --num-callers=50 --leak-check=full \
        --show-leak-kinds=definite --errors-for-leak-kinds=definite --log-file="$log" \
        "$PY" tests/memcheck/grid.py || status=1
done
"$PY" tests/memcheck/filter_log.py "${logs[@]}" || status=1
exit $status
