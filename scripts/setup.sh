#!/usr/bin/env bash
# Create or refresh .venv with the pinned dependencies (requirements.lock); a no-op in a second
# when nothing changed. torch is pinned to 2.13.0 (a CPU build here, the CUDA build on a cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.visctx-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -e . ${VISCTX_EXTRAS:+".[$VISCTX_EXTRAS]"}
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
