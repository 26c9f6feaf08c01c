#!/usr/bin/env bash
# The CPU cells of docs/benchmark.md's "One run, every attacker" section: one seed end to end on 2 cores, fp32,
# one cell at a time (about 15-20 minutes an embedded cell, 45 a Lyra cell on idle cores). Resumable: rerun it
# and finished cells are skipped. Stages, in the order they are worth running:
#   bash benchmarks/cpu_defense.sh [output root, default runs/cpu_defense] [stage ...]
# Stages: adaptive (CE and DeCE at the default against the attacker that knows DeCE, the training signal alone:
# the first run), dev (the development split, fixed_deadcode seed 0: CE and dece+continue switching after epoch 1
# and before training, where the switch point is chosen), continue / continue0 (dece+continue switching after
# epoch 1 / before training on the data audit alone, without ContinueWithCE's guard, every attack, seed 1), ce and
# dece (CE, and DeCE at the default, on every other attack, seed 1), lyra (seed 1: CE, DeCE at the default,
# dece+continue, ls, gce, lowlr), dev_lyra (Lyra BadPre seed 0: dece+continue, then CE to compare). lyra and dev_lyra run dece+continue at the
# library's default, the guarded switch before training, which on Lyra BadPre 20% waits for epoch 1. Every stage
# but adaptive combines the data audit with the training signal (bench --audit). Each attack has its own folder,
# <attack>_p<percent> (and <attack>_p<percent>_switch0; a folder holds one set of settings). With the guard, a
# switch before training is the continue0 cell where the audit's top robust z reaches 5 and the continue cell
# elsewhere (tested: tests/test_continue_ce.py); defense_table.py pairs them. The warm-up model of a seed is made
# once and shared by the folders (hard links).
# Published as benchmarks/results/cpu_defense/ (`python benchmarks/defense_table.py collect`).
set -euo pipefail
ROOT=${1:-runs/cpu_defense}
shift || true
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(adaptive dev continue0 ce dece continue lyra dev_lyra)
export HF_HUB_OFFLINE=1
L=${LYRA_DIR:-../shared/data/lyra}
source "$(dirname "$0")/settings.sh"
DECE_TRAINER=${DECE_TRAINER:-dece-trainer}
share_cache() {  # share_cache FOLDER: the warm-up models other folders of $ROOT already made, as hard links
  mkdir -p "$1/_cache"
  for src in "$ROOT"/*/_cache; do [ "$src" = "$1/_cache" ] || cp -alnT "$src" "$1/_cache" 2>/dev/null || true; done
}
embedded() {  # embedded OUTPUT_DIR BENCH_ARGS...
  local out=$1; shift
  share_cache "$out"
  $DECE_TRAINER bench "${EMBEDDED[@]}" --no-bf16 --output_dir "$out" "$@"
}
# every embedded attack of the one-seed table (attack, rate): both dead-code attacks and the adaptive family
SETTINGS=("adaptive 0.1" "fixed_deadcode 0.05" "grammar_deadcode 0.05" "adaptive_triggers 0.1" "adaptive_payloads 0.1"
          "adaptive_spread 0.1" "adaptive 0.05")
# ONLY="fixed_deadcode_p5 adaptive_p10" limits the per-attack stages to those folders (default: every setting);
# LYRA_LOSSES="ce,dece+continue" runs those of the lyra stage's cells first (the stage passes the library's default
# switch point, 0 and guarded, explicitly, so a folder's cells share one fingerprint whichever losses a call names)
each_attack() {  # each_attack LOSSES FOLDER_SUFFIX [BENCH_ARGS...]: one bench run per setting, seed 1
  local losses=$1 suffix=$2; shift 2
  for setting in "${SETTINGS[@]}"; do
    read -r attack rate <<< "$setting"
    local name="${attack}_p$(python3 -c "print(round($rate * 100))")"
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || continue
    [ -z "$suffix" ] && [ "$losses" != dece+continue ] && [ "$setting" = "adaptive 0.1" ] && continue  # adaptive's
    embedded "$ROOT/$name$suffix" --attacks "$attack" \
        --poison_rates "$rate" --losses "$losses" --alpha_finals 0.5 --seeds 1 "$@"
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
    adaptive) embedded "$ROOT/adaptive" --attacks adaptive --poison_rates 0.1 --losses dece,ce --alpha_finals 0.5 \
                  --seeds 1 --no-audit ;;
    dev) embedded "$ROOT/dev_fixed_deadcode_p5" --attacks fixed_deadcode --losses ce,dece+continue --alpha_finals 0.5 \
             --seeds 0 --switch_epoch 1
         embedded "$ROOT/dev_fixed_deadcode_p5_switch0" --attacks fixed_deadcode --losses dece+continue \
             --alpha_finals 0.5 --seeds 0 --switch_epoch 0 --audit_confidence none ;;
    continue) each_attack dece+continue "" --switch_epoch 1 ;;
    continue0) each_attack dece+continue _switch0 --switch_epoch 0 --audit_confidence none ;;
    ce) each_attack ce "" ;;
    dece) each_attack dece "" ;;
    lyra) lyra --losses "${LYRA_LOSSES:-ce,dece,dece+continue,ls,gce,lowlr}" --alpha_finals 0.5 --seeds 1 \
              --switch_epoch 0 --output_dir "$ROOT/lyra" ;;
    dev_lyra) lyra --losses dece+continue,ce --alpha_finals 0.5 --seeds 0 --switch_epoch 0 \
                  --output_dir "$ROOT/dev_lyra" ;;
    *) echo "unknown stage $stage (adaptive, dev, continue0, ce, dece, continue, lyra, dev_lyra)" >&2; exit 2 ;;
  esac
done
