#!/usr/bin/env bash
# Runs the op tests (CPU only) against the ASan+UBSan build of csrc/ made by CMakeLists.txt
# (-DSEQCLR_EXT_SANITIZE=ON), inside the ordinary, uninstrumented python of the active
# environment, where seqclr_ext must be installed (pip install --no-build-isolation .).
#
#   .ci/sanitize-tests.sh [-- PYTEST ARGS...]
#
# SANITIZED_LIB: the library (default build-cmake/libseqclr_ext.so); it replaces the
# installed seqclr_ext._C through seqclr_ext.ops' SEQCLR_EXT_LIBRARY hook.
# Without PYTEST ARGS: every tests/test_*.py that uses the ops (names seqclr_ext.ops or
# torch.ops.seqclr_ext), -k "not cuda" (this build has no CUDA kernels).
# Exits non-zero on a sanitizer report, a failing test, or no test run.
set -euo pipefail
cd "$(dirname "$0")/.."

lib=$(realpath "${SANITIZED_LIB:-build-cmake/libseqclr_ext.so}")
[[ -f $lib ]] || { echo "sanitize-tests: no library at $lib (build it with CMake first)" >&2; exit 1; }

if [[ ${1:-} == -- ]]; then
  shift
  pytest_args=("$@")
else
  mapfile -t op_tests < <(grep -lE 'seqclr_ext\.ops|from seqclr_ext import[^#]*\bops\b|torch\.ops\.seqclr_ext' tests/test_*.py 2>/dev/null || true)
  if ((${#op_tests[@]} == 0)); then
    echo "sanitize-tests: found no op tests in tests/test_*.py" >&2
    exit 1
  fi
  pytest_args=("${op_tests[@]}" -k "not cuda")
fi

# The runtimes of the compiler that built the library (the one CMake recorded).
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$(dirname "$lib")/CMakeCache.txt" 2>/dev/null || true)
cxx=${cxx:-c++}
libasan=$("$cxx" -print-file-name=libasan.so)
libstdcxx=$("$cxx" -print-file-name=libstdc++.so.6)
[[ -f $libasan ]] || { echo "sanitize-tests: $cxx has no libasan.so" >&2; exit 1; }

export SEQCLR_EXT_LIBRARY=$lib
# python itself is not instrumented, so the ASan runtime must be loaded before anything
# else ("ASan runtime does not come first in initial library list" otherwise). libstdc++
# goes right after it: ASan intercepts __cxa_throw and looks up the real one when it
# starts, and python does not link libstdc++, so without this the first C++ exception
# (any TORCH_CHECK failure, e.g. the bad-input tests; triton's import) aborts with
# "CHECK failed: ... real___cxa_throw ... != (0)". libubsan needs no preload: the library
# links it and it starts fine when the library is dlopen'ed.
export LD_PRELOAD="$libasan:$libstdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
# detect_leaks=0: CPython and torch keep their import-time allocations until exit (tens of
# thousands of "leaks": interned objects, pybind11 function records, ...), and the leak
# check at exit alone takes minutes. Nothing else is needed on a GPU-less machine.
export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# UBSan reports are recoverable by default: stop at the first one, with its stack.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# A sanitizer report ends the process at once: flush pytest's progress as it goes.
export PYTHONUNBUFFERED=1

echo "sanitize-tests: SEQCLR_EXT_LIBRARY=$SEQCLR_EXT_LIBRARY"
echo "sanitize-tests: LD_PRELOAD=$LD_PRELOAD"
echo "sanitize-tests: ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"

# Preflight: the ASan runtime is live and the ops come from the sanitized library.
python - <<'EOF'
import ctypes, os
import torch
import seqclr_ext.ops  # noqa: F401  (loads SEQCLR_EXT_LIBRARY)
ctypes.CDLL(None).__asan_report_load8  # AttributeError if ASan is not loaded
lib = os.path.realpath(os.environ["SEQCLR_EXT_LIBRARY"])
loaded = {os.path.realpath(p) for p in torch.ops.loaded_libraries}
assert lib in loaded, f"seqclr_ext ops not loaded from {lib}: {sorted(loaded)}"
print(f"sanitize-tests: preflight OK (torch {torch.__version__}, ops from {lib})")
EOF

# --capture=sys: pytest's default fd-level capture would swallow a sanitizer report
# written to fd 2 when the process dies; this keeps fd 2 on the log.
set +e
pytest --capture=sys --durations=10 "${pytest_args[@]}"
rc=$?
set -e
if ((rc == 5)); then
  echo "sanitize-tests: pytest collected no tests (exit 5): failing" >&2
elif ((rc != 0)); then
  echo "sanitize-tests: failed (exit $rc)" >&2
fi
exit "$rc"
