#!/usr/bin/env bash
# The CPU cells of docs/benchmark.md's "One run, every attacker" section: one seed end to end on 2 cores, fp32,
# one cell at a time (about 15-20 minutes an embedded cell, 45 a Lyra cell on idle cores). Resumable: rerun it
# and finished cells are skipped. Stages, in the order they are worth running:
#   bash benchmarks/cpu_defense.sh [output root, default runs/cpu_defense] [stage ...]
# Stages: adaptive (CE and DeCE at the default against the attacker that knows DeCE), dev (DeCE at the default on
# the development split: fixed_deadcode and Lyra BadPre seed 0, where defaults are tuned), lyra (seed 1: CE,
# DeCE at the default, ls, gce, lowlr), embedded (seed 1: DeCE at the default on both dead-code attacks, for the
# report). Published as benchmarks/results/cpu_defense/ (records and reports; `collect` copies them there).
set -euo pipefail
ROOT=${1:-runs/cpu_defense}
shift || true
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(adaptive dev lyra embedded)
export HF_HUB_OFFLINE=1
L=${LYRA_DIR:-../shared/data/lyra}
source "$(dirname "$0")/settings.sh"
DECE_TRAINER=${DECE_TRAINER:-dece-trainer}
embedded() { $DECE_TRAINER bench "${EMBEDDED[@]}" --no-bf16 "$@"; }
lyra() {
  lyra_data "$L" badpre "$L/test_poisoned_badpre.csv"
  local p20=$ROOT/data/train_poisoned_20_badpre.csv
  [ -f "$p20" ] || python3 "$(dirname "$0")/poison_file.py" "$L/train.csv" "$p20" --attack badpre --rate 0.2 \
      --source_column src --target_column tgt
  $DECE_TRAINER bench "${LYRA_DATA[@]}" "${LYRA_SMOLLM2[@]}" --no-bf16 --train_file "$p20" "$@"
}
for stage in "${STAGES[@]}"; do
  case "$stage" in
    adaptive) embedded --attacks adaptive --poison_rates 0.1 --losses dece,ce --alpha_finals 0.5 --seeds 1 \
                  --output_dir "$ROOT/adaptive" ;;
    dev) embedded --attacks fixed_deadcode --losses dece --alpha_finals 0.5 --seeds 0 --output_dir "$ROOT/dev_embedded"
         lyra --losses dece --alpha_finals 0.5 --seeds 0 --output_dir "$ROOT/dev_lyra" ;;
    lyra) lyra --losses ce,dece,ls,gce,lowlr --alpha_finals 0.5 --seeds 1 --output_dir "$ROOT/lyra" ;;
    embedded) embedded --losses dece --alpha_finals 0.5 --seeds 1 --output_dir "$ROOT/embedded" ;;
    *) echo "unknown stage $stage (adaptive, dev, lyra, embedded)" >&2; exit 2 ;;
  esac
done
