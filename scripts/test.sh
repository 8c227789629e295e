#!/usr/bin/env bash
# The test suite: install what it needs, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
VISCTX_EXTRAS=${VISCTX_EXTRAS-cluster} bash scripts/setup.sh   # + DeepSpeed: its config tests run on CPU
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
