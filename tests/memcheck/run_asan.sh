#!/usr/bin/env bash
# The same grid as run_memcheck.sh (tests/memcheck/grid.py) against an AddressSanitizer
# build of the compiled core, on every instruction-set path the CPU has, AVX-512
# included (which valgrind cannot run). The extension is built into build/asan/ (the
# installed one is left alone) and loaded first through PYTHONPATH; libasan is
# preloaded since Python itself is not instrumented. Leak detection is off (CPython's
# own allocations at exit are not leaks of ours).
#
#   tests/memcheck/run_asan.sh [PYTHON]      # default .venv/bin/python; about a minute (mostly the build)
#   tests/memcheck/run_asan.sh --selftest [PYTHON]
#                   # a deliberate out-of-bounds write in the kernel: must be reported
set -euo pipefail
cd "$(dirname "$0")/../.."
selftest=
if [ "${1:-}" = "--selftest" ]; then selftest=--selftest-write; shift; fi
PY=${1:-.venv/bin/python}
out=build/asan
rm -rf "$out"
mkdir -p "$out/tmp" "$out/lib"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" LDFLAGS="-fsanitize=address" \
    "$PY" setup.py -q build_ext --build-temp "$out/tmp" --build-lib "$out/lib" >"$out/build.log" 2>&1 \
    || { tail -30 "$out/build.log"; exit 2; }
# the package's Python files next to the instrumented extension
cp src/rnnfast/*.py "$out/lib/rnnfast/"
cp -r src/rnnfast/io "$out/lib/rnnfast/"
[ -d src/rnnfast/data ] && cp -r src/rnnfast/data "$out/lib/rnnfast/"
asan=$(gcc -print-file-name=libasan.so)
run() {
    LD_PRELOAD="$asan" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 PYTHONPATH="$out/lib" OMP_NUM_THREADS=2 \
        "$PY" -c "
import sys, rnnfast._kernels as k
assert '$out' in k.__file__, k.__file__          # the instrumented build, not the installed one
sys.argv = ['grid.py'] + sys.argv[1:]
exec(open('tests/memcheck/grid.py').read())" "$@"
}
if [ -n "$selftest" ]; then
    if run $selftest >"$out/selftest.log" 2>&1; then
        echo "selftest FAILED: the out-of-bounds write was not reported"; exit 1
    fi
    grep -m1 "ERROR: AddressSanitizer" "$out/selftest.log"
    echo "selftest passed: the out-of-bounds write was reported"; exit 0
fi
status=0
for isa in $("$PY" -c "from rnnfast import _kernels as k; print(' '.join(k.ISA_LEVELS[:k.ISA_LEVELS.index(k.best_isa()) + 1]))"); do
    echo "== RNNFAST_ISA=$isa: AddressSanitizer on tests/memcheck/grid.py"
    RNNFAST_ISA=$isa run || status=1
done
exit $status
