#!/usr/bin/env bash
# The CPU end-to-end checks of DeCE + filter in docs/benchmark.md ("End-to-end checks on the CPU"): the embedded
# task's dead-code attacks, seed 1, fp32 on 2 cores (about 12 minutes per cell). Resumable.
#   bash benchmarks/cpu_filter_check.sh [output root, default runs/research]
# Results as published: benchmarks/results/cpu_filter_check{,_grammar}/ (the folders' results.json and table.md).
set -euo pipefail
ROOT=${1:-runs/research}
export HF_HUB_OFFLINE=1
source "$(dirname "$0")/settings.sh"
bench() { dece-trainer bench "${EMBEDDED[@]}" --no-bf16 --seeds 1 "$@"; }
# fixed_deadcode: CE, DeCE at alpha_base 0.9 and the filter on it; then DeCE at the package default, the filter on
# it and the baselines (onion left out: its leave-one-out scoring takes hours on 2 cores).
bench --attacks fixed_deadcode --losses dece,dece+filter,ce --alpha_bases 0.9 --output_dir "$ROOT/cpu_filter"
bench --attacks fixed_deadcode --losses dece,dece+filter,gce,lowlr,ls --alpha_finals 0.5 --output_dir "$ROOT/cpu_filter"
# grammar_deadcode: CE, DeCE at the default and the filter on it.
bench --attacks grammar_deadcode --losses ce,dece,dece+filter --alpha_finals 0.5 \
    --output_dir "$ROOT/cpu_filter_grammar"
