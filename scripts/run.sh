#!/usr/bin/env bash
# The main job: install what it needs, then run the whole study with DVC (which runs Snakemake).
# Extra arguments go to `dvc repro` (e.g. --force, or a stage name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
visctx check > /dev/null   # bad params (config/config.yaml, params.yaml) stop here, naming the key
dvc repro "$@"
