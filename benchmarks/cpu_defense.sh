#!/usr/bin/env bash
# The CPU cells of docs/benchmark.md's "One run, every attacker" section: one seed end to end on 2 cores, fp32,
# one cell at a time (about 15-20 minutes an embedded cell, 45 a Lyra cell on idle cores). Resumable: rerun it
# and finished cells are skipped. Stages, in the order they are worth running:
#   bash benchmarks/cpu_defense.sh [output root, default runs/cpu_defense] [stage ...]
# Stages: adaptive (CE and DeCE at the default against the attacker that knows DeCE, the training signal alone:
# the first run), continue (dece+continue on every attack, seed 1), baselines (CE and DeCE at the default on every
# other attack, seed 1), dev (dece+continue on the development split, fixed_deadcode seed 0, where the report's
# fence is tuned), lyra (seed 1: CE, DeCE at the default, dece+continue, ls, gce, lowlr), dev_lyra (Lyra BadPre
# seed 0). Every stage but adaptive combines the data audit with the training signal (bench --audit). Each attack
# has its own folder, <attack>_p<percent>. Published as benchmarks/results/cpu_defense/ (records and reports).
set -euo pipefail
ROOT=${1:-runs/cpu_defense}
shift || true
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(adaptive continue baselines dev lyra dev_lyra)
export HF_HUB_OFFLINE=1
L=${LYRA_DIR:-../shared/data/lyra}
source "$(dirname "$0")/settings.sh"
DECE_TRAINER=${DECE_TRAINER:-dece-trainer}
embedded() { $DECE_TRAINER bench "${EMBEDDED[@]}" --no-bf16 "$@"; }
# every embedded attack of the one-seed table (attack, rate): both dead-code attacks and the adaptive family
SETTINGS=("adaptive 0.1" "fixed_deadcode 0.05" "grammar_deadcode 0.05" "adaptive_triggers 0.1" "adaptive_payloads 0.1"
          "adaptive_spread 0.1" "adaptive 0.05")
each_attack() {  # each_attack LOSSES: one bench run per setting, seed 1, into $ROOT/<attack>_p<percent>
  for setting in "${SETTINGS[@]}"; do
    read -r attack rate <<< "$setting"
    [ "$1" = ce,dece ] && [ "$setting" = "adaptive 0.1" ] && continue  # the adaptive stage's cells
    embedded --attacks "$attack" --poison_rates "$rate" --losses "$1" --alpha_finals 0.5 --seeds 1 \
        --output_dir "$ROOT/${attack}_p$(python3 -c "print(round($rate * 100))")"
  done
}
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
                  --no-audit --output_dir "$ROOT/adaptive" ;;
    continue) each_attack dece+continue ;;
    baselines) each_attack ce,dece ;;
    dev) embedded --attacks fixed_deadcode --losses dece+continue --alpha_finals 0.5 --seeds 0 \
             --output_dir "$ROOT/dev_fixed_deadcode_p5" ;;
    lyra) lyra --losses ce,dece,dece+continue,ls,gce,lowlr --alpha_finals 0.5 --seeds 1 --output_dir "$ROOT/lyra" ;;
    dev_lyra) lyra --losses dece+continue --alpha_finals 0.5 --seeds 0 --output_dir "$ROOT/dev_lyra" ;;
    *) echo "unknown stage $stage (adaptive, continue, baselines, dev, lyra, dev_lyra)" >&2; exit 2 ;;
  esac
done
