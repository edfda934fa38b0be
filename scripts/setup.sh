#!/usr/bin/env bash
# Fresh-machine setup: .venv with torch, this package (editable, with test tools) and the
# released checkpoints. Offline: RT4KSR_WEIGHTS_FROM=FOLDER bash scripts/setup.sh
# TORCH_SPEC: pip arguments for torch in a new .venv (default torch==2.13.0), e.g.
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
# RT4KSR_EXTRAS: the package's extras to install (default test,video), e.g. RT4KSR_EXTRAS=test,ray,video
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: keeping the torch already in .venv (remove .venv to change it)"
else
  read -ra torch_spec <<< "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -m pip install -q "${torch_spec[@]}"
fi
.venv/bin/python -m pip install -q -e ".[${RT4KSR_EXTRAS:-test,video}]"
.venv/bin/python install.py
