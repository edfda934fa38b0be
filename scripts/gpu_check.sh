#!/usr/bin/env bash
# GPU check on a machine with only this repository, offline, within 9 minutes in all: the speed
# table first (CUDA graphs, no torch.compile; it is the point), then the engine's GPU tests,
# then its CUDA compile tests, then the engine with torch.compile if time allows. Each step has
# its own timeout (150 + 100 + 120 + 120 s, ~1 min of setup): a compiler that is slow to start
# cannot make the GPU tests time out. The table is printed as soon as it exists, and the
# benchmark saves its JSON after every row, so a step cut short loses only its unfinished rows.
#
#   bash scripts/gpu_check.sh
#
# Python: $PYTHON, else .venv/bin/python, else the first python3/python that imports a CUDA
# build of torch. Nothing is installed: the package runs from this tree (PYTHONPATH).
# Checkpoints: weights/ (carry it along) or RT4KSR_WEIGHTS_FROM=FOLDER.
# Tests need the shared folder (weights/ and images/Set5, Set14): RT4KSR_SHARED, else ./shared,
# else ../shared; without it only the benchmark runs.
# The paper's own code as a baseline row: RT4KSR_UPSTREAM=DIR (the code/ folder of a checkout of
# github.com/eduardzamfir/RT4KSR; needs torchvision).
# Results: gpu_check/ (bench_*.json and .log, tests.log, compile_tests.log).
# Exit status: 2 without a CUDA torch or checkpoints, 1 if the GPU tests failed or timed out, a
# compile test failed, or no benchmark row was measured, else 0. A compile test that only ran
# out of time is reported, not counted as a failure (a cold compiler's speed is not a defect).
set -uo pipefail
cd "$(dirname "$0")/.."
out=gpu_check
mkdir -p "$out"

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }
python=""
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && has_cuda_torch "$candidate"; then
        python=$candidate; break
    fi
done
if [ -z "$python" ]; then
    echo "no CUDA torch: no Python here imports a CUDA build of torch with a visible GPU" \
        "(tried ${PYTHON:+\$PYTHON=$PYTHON, }.venv/bin/python, python3, python); set PYTHON=/path/to/python" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

if [ -n "${RT4KSR_WEIGHTS_FROM:-}" ]; then
    # install.py also installs missing requirements, which fails offline; the checkpoints it
    # copies (verified) are looked for below either way.
    "$python" install.py --from "$RT4KSR_WEIGHTS_FROM" >"$out/install.log" 2>&1 || cat "$out/install.log"
fi
ls weights/rt4ksr_x2.pth weights/rt4ksr_x3.pth >/dev/null || { echo "checkpoints missing" >&2; exit 2; }

table() {
    local reports=()
    for report in "$out/bench_graphs.json" "$out/bench_compiled.json"; do
        [ -s "$report" ] && reports+=("$report")
    done
    [ ${#reports[@]} -gt 0 ] || return 1
    echo
    "$python" -m rt4ksr_nodes.bench --table-from "${reports[@]}"
}

echo "== benchmark, CUDA graphs without torch.compile"
RT4KSR_COMPILE=never timeout 150 "$python" -m rt4ksr_nodes.bench --weights weights \
    ${RT4KSR_UPSTREAM:+--upstream "$RT4KSR_UPSTREAM"} \
    --json "$out/bench_graphs.json" >"$out/bench_graphs.log" 2>&1 \
    || { echo "benchmark exit $? (124 = timed out), rows so far kept"; tail -n 20 "$out/bench_graphs.log"; }
table || echo "no benchmark row finished"

tests_status=0
compile_status=0
shared=${RT4KSR_SHARED:-}
[ -z "$shared" ] && [ -d shared/images ] && shared=$PWD/shared
[ -z "$shared" ] && [ -d ../shared/images ] && shared=$(cd ../shared && pwd)
if [ -n "$shared" ] && "$python" -c "import pytest" 2>/dev/null; then
    engine_tests=(tests/test_engine_fast.py tests/test_engine.py tests/test_engine_runtime.py)
    echo "== GPU tests without torch.compile (shared folder $shared)"
    # The compile tests run next, on their own clock; the CPU compile test is the CPU suite's.
    RT4KSR_SHARED=$shared timeout 100 "$python" -m pytest -q -rs -p no:cacheprovider \
        -k "not compile" "${engine_tests[@]}" >"$out/tests.log" 2>&1
    tests_status=$?
    echo "tests exit $tests_status (124 = timed out)"; tail -n 25 "$out/tests.log"
    echo "== CUDA compile tests (opt-in compile; automatic compile in the background of a stream)"
    RT4KSR_SHARED=$shared RT4KSR_COMPILE=auto timeout 120 "$python" -m pytest -q -rs \
        -p no:cacheprovider -k "cuda and compile" "${engine_tests[@]}" \
        >"$out/compile_tests.log" 2>&1
    compile_status=$?
    echo "compile tests exit $compile_status (124 = timed out)"; tail -n 15 "$out/compile_tests.log"
else
    echo "== GPU tests skipped: no shared folder with images, or no pytest"
fi

echo "== benchmark, engine with torch.compile (max-autotune), fp16"
RT4KSR_COMPILE=always timeout 120 "$python" -m rt4ksr_nodes.bench --weights weights \
    --forms engine --precision fp16 --json "$out/bench_compiled.json" \
    >"$out/bench_compiled.log" 2>&1 \
    || { echo "compiled benchmark exit $? (124 = timed out), rows so far kept"; tail -n 20 "$out/bench_compiled.log"; }

table || { echo "no benchmark row finished" >&2; exit 1; }
if [ "$tests_status" -ne 0 ]; then
    echo "GPU tests FAILED (exit $tests_status); see $out/tests.log" >&2
    exit 1
fi
if [ "$compile_status" -eq 124 ]; then
    echo "CUDA compile tests ran out of time (not counted as failed); see $out/compile_tests.log" >&2
elif [ "$compile_status" -ne 0 ]; then
    echo "CUDA compile tests FAILED (exit $compile_status); see $out/compile_tests.log" >&2
    exit 1
fi
