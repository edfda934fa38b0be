#!/usr/bin/env bash
# Fresh-machine setup: .venv with torch, this package (editable, with test tools) and the
# released checkpoints. Offline: RT4KSR_WEIGHTS_FROM=FOLDER bash scripts/setup.sh
# TORCH_SPEC picks the torch build (default torch==2.13.0; e.g. a CUDA index URL spec).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python install.py
