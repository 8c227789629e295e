#!/usr/bin/env bash
# The performance harness (on demand, ~13 min): a fresh clone runs the default study stage by stage,
# then no-op reruns, rerun sets, decode throughput, encoder passes and start-up overhead are
# measured. Writes results/perf/perf.{json,md,log}. `--no-fresh` measures this checkout instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec visctx perf "$@"
