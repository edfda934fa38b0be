#!/usr/bin/env bash
# GPU check on a machine with only this repository, offline: the engine's GPU tests, then the
# speed table (CUDA graphs; then torch.compile, if it finishes in time), in ~8 minutes.
#
#   bash scripts/gpu_check.sh
#
# Python: $PYTHON, else .venv, else the first python3/python that imports a CUDA build of torch
# (a venv with --system-site-packages is made on top of it for this package).
# Checkpoints: weights/ (carry it along) or RT4KSR_WEIGHTS_FROM=FOLDER.
# Tests need the shared folder (weights/ and images/Set5, Set14): RT4KSR_SHARED, else ./shared,
# else ../shared; without it only the benchmark runs.
# Results: gpu_check/ (bench_*.json, tests.log).
set -uo pipefail
cd "$(dirname "$0")/.."
out=gpu_check
mkdir -p "$out"

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }
python=""
for candidate in ${PYTHON:-} .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && has_cuda_torch "$candidate"; then
        python=$candidate; break
    fi
done
if [ -z "$python" ]; then
    echo "no Python with a CUDA build of torch found; set PYTHON=/path/to/python" >&2
    exit 2
fi
if [ "$python" != .venv/bin/python ]; then
    [ -x .venv-gpu/bin/python ] || "$python" -m venv --system-site-packages .venv-gpu
    python=.venv-gpu/bin/python
fi
# Offline: no dependencies fetched; if even the editable install fails, run from the tree.
"$python" -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1 \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

source=${RT4KSR_WEIGHTS_FROM:-weights}
if ! "$python" install.py --from "$source" >"$out/install.log" 2>&1; then
    # install.py also installs missing requirements, which fails offline; the checkpoints may
    # still be there and verified.
    cat "$out/install.log"
fi
ls weights/rt4ksr_x2.pth weights/rt4ksr_x3.pth >/dev/null || { echo "checkpoints missing" >&2; exit 2; }

shared=${RT4KSR_SHARED:-}
[ -z "$shared" ] && [ -d shared/images ] && shared=$PWD/shared
[ -z "$shared" ] && [ -d ../shared/images ] && shared=$(cd ../shared && pwd)
if [ -n "$shared" ] && "$python" -c "import pytest" 2>/dev/null; then
    echo "== GPU tests (shared folder $shared)"
    RT4KSR_SHARED=$shared timeout 180 "$python" -m pytest -q -rs -p no:cacheprovider \
        tests/test_engine_fast.py tests/test_engine.py tests/test_engine_runtime.py \
        >"$out/tests.log" 2>&1
    echo "tests exit $?"; tail -n 25 "$out/tests.log"
else
    echo "== GPU tests skipped: no shared folder with images, or no pytest"
fi

echo "== benchmark, CUDA graphs without torch.compile"
RT4KSR_COMPILE=never timeout 180 "$python" -m rt4ksr_nodes.bench --weights weights \
    --json "$out/bench_graphs.json" >"$out/bench_graphs.log" 2>&1 || tail -n 20 "$out/bench_graphs.log"
echo "== benchmark, engine with torch.compile (max-autotune), fp16"
RT4KSR_COMPILE=always timeout 200 "$python" -m rt4ksr_nodes.bench --weights weights \
    --forms engine --precision fp16 --json "$out/bench_compiled.json" \
    >"$out/bench_compiled.log" 2>&1 || tail -n 20 "$out/bench_compiled.log"

reports=()
for report in "$out/bench_graphs.json" "$out/bench_compiled.json"; do
    [ -s "$report" ] && reports+=("$report")
done
[ ${#reports[@]} -gt 0 ] || { echo "no benchmark finished" >&2; exit 1; }
echo
"$python" -m rt4ksr_nodes.bench --table-from "${reports[@]}"
