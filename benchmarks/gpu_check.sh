#!/usr/bin/env bash
# The GPU check, one command on a fresh GPU machine, nothing from outside it needed once the project is set up:
#   0. `make setup` when .venv is missing (the project's own environment), then its interpreter for all that follows,
#   1. the tests that need CUDA (pytest -m cuda; they skip without CUDA),
#   2. benchmarks/gpu_check.py: correctness first (fp16 skipped steps, masks, host syncs, DDP), then throughput,
#      compile last; every section under its own time limit -> gpu_check.json and gpu_check.md.
# Estimate on one H100: ~45 s of tests + ~5 min of sections (gpu_check.py prints the budget per section).
# Output goes to $OUT if set, else ./gpu_check_out. Extra arguments go to gpu_check.py (e.g. --dry-run on a CPU,
# --sections ddp,fp16_overflow). PYTHON overrides the interpreter (default: .venv/bin/python).
#   benchmarks/gpu_check.sh                 # on the GPU machine
#   OUT=/tmp/gc benchmarks/gpu_check.sh --dry-run
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-./gpu_check_out}"
tests_limit="${GPU_CHECK_TESTS_LIMIT:-150}"    # seconds
case " $* " in *" --dry-run "*) tests_limit="${GPU_CHECK_TESTS_LIMIT:-900}" ;; esac  # a CPU, maybe shared: slower
driver_limit="${GPU_CHECK_DRIVER_LIMIT:-1800}" # seconds; each section also has its own limit (gpu_check.py)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
if [ -z "${PYTHON:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "gpu_check.sh: no .venv here; setting the project up (make setup)"
        make setup
    fi
    python="$repo/.venv/bin/python"
else
    python="$PYTHON"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

status=0
tests_rc=0
timeout -k 10 "$tests_limit" "$python" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 \
    | tee "$out/pytest_cuda.txt" || tests_rc=$?   # pipefail: the status is pytest's
if [ "$tests_rc" -eq 5 ]; then   # pytest: no test selected (none marked cuda)
    echo "gpu_check.sh: no test is marked cuda"
elif [ "$tests_rc" -ne 0 ]; then
    echo "gpu_check.sh: pytest -m cuda failed (exit $tests_rc); see $out/pytest_cuda.txt" >&2
    status=1
fi

driver_rc=0
timeout -k 10 "$driver_limit" "$python" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 \
    | tee "$out/gpu_check.log" || driver_rc=$?
if [ "$driver_rc" -ne 0 ]; then
    echo "gpu_check.sh: gpu_check.py failed (exit $driver_rc$([ "$driver_rc" -eq 124 ] && echo ', time limit')); the" \
         "sections done so far are in $out/gpu_check.json" >&2
    status=1
fi
echo "gpu_check.sh: results in $out (gpu_check.md, gpu_check.json, pytest_cuda.txt, gpu_check.log)"
exit "$status"
