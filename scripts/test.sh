#!/usr/bin/env bash
# The test suite: install what it needs, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
# + DeepSpeed (its config tests run on CPU) and lmms-eval (the lmms-eval model's tests)
VISCTX_EXTRAS=${VISCTX_EXTRAS-cluster,lmms} bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
