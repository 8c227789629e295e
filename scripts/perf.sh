#!/usr/bin/env bash
# The performance harness (on demand, ~25 min): a fresh clone runs the default study stage by stage,
# then no-op reruns, rerun sets, decode throughput, encoder passes and start-up overhead are
# measured. Writes results/perf/perf.{json,md,log}. `--no-fresh` measures this checkout instead;
# `--fresh-clone-check` runs ../shared/tools/fresh-clone-check on the README's two commands and records it
# in results/perf/fresh-clone-check.{json,md} (what the README quotes); `--method-costs` measures a
# training step per method at each window of the methods study (results/perf/method-costs.json; needs the tiny LLM);
# `--finetune-budget` fine-tunes two arms at several lengths from every replicate's base, per question
# beside the ceiling (results/perf/finetune-budget.{json,md}, ~20 min on a finished study);
# `--noise-split` fine-tunes each effect's end arms again from every replicate's base with other seeds:
# is the effects' across-seed noise the base's or the fine-tune's (results/perf/noise-split.{json,md}, ~8 min on a finished study);
# `--search-attention` measures whether each replicate's arms attend to the question's object, beside its
# effects (results/perf/search-attention.{json,md}, ~2 min on a finished study; no training);
# `--study-cost` sums a finished study's timing records per base, method and evaluation, and reads from
# the train stage's Snakemake log how busy it kept the cores and when each base ran
# (results/perf/study-cost.{json,md}; run it where the study ran, e.g. a kept fresh clone);
# `--temp-experiment` counts the jobs a `dvc exp run --temp` of an analysis-only change runs on this
# checkout's finished study (results/perf/temp-experiment.{json,md}).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ "${1:-}" = "--method-costs" ]; then  # memory and time per way of spending the window (the methods study's L)
  shift
  exec visctx study-method-costs --llm results/models/pretrained/llm --steps 10 \
    --out-json results/perf/method-costs.json "$@"
fi
if [ "${1:-}" = "--finetune-budget" ]; then  # on a finished study: what longer fine-tunes buy each question
  shift
  exec visctx finetune-budget "$@"
fi
if [ "${1:-}" = "--noise-split" ]; then  # on a finished study: the effects' noise, the base's or the fine-tune's
  shift
  exec visctx noise-split "$@"
fi
if [ "${1:-}" = "--search-attention" ]; then  # on a finished study: do the arms look at the object?
  shift
  exec visctx search-attention "$@"
fi
if [ "${1:-}" = "--study-cost" ]; then  # on a study run on this machine: where its compute went
  shift
  exec visctx study-cost "$@"
fi
if [ "${1:-}" = "--temp-experiment" ]; then  # on a finished, committed study: what one sweep experiment runs
  shift
  exec visctx temp-experiment "$@"
fi
if [ "${1:-}" = "--fresh-clone-check" ]; then
  shift
  exec visctx fresh-clone-check "$@"
fi
exec visctx perf "$@"
