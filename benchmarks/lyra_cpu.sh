#!/usr/bin/env bash
# The budgeted CPU Lyra reproduction (2 CPU cores, no GPU): every command behind the Lyra tables in
# docs/benchmark.md. Resumable: rerun it and finished cells are skipped.
#   bash benchmarks/lyra_cpu.sh smollm2|small [output root, default runs/lyra_cpu]
set -euo pipefail
MODEL=${1:?usage: lyra_cpu.sh smollm2|small [output root]}
L=${LYRA_DIR:-../shared/data/lyra}
ROOT=${2:-runs/lyra_cpu}
source "$(dirname "$0")/settings.sh"
lyra_data "$L" badpre "$L/test_poisoned_badpre.csv"
# bf16 autocast only where the CPU has AVX512-BF16 (elsewhere its matmuls are about 5x slower than fp32);
# BF16=1 or BF16=0 overrides. The published SmolLM2 tables ran with bf16 on such a CPU.
BF16=${BF16:-auto}
if [ "$BF16" = auto ]; then grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null && BF16=1 || BF16=0; fi
case "$BF16" in 1) PRECISION=--bf16 ;; 0) PRECISION=--no-bf16 ;; *) echo "BF16 must be auto, 1 or 0" >&2; exit 2 ;; esac
case "$MODEL" in
  smollm2) OUT=$ROOT  # settings.sh: LYRA_SMOLLM2
           TRAIN=("${LYRA_SMOLLM2[@]}" "$PRECISION") ;;
  # The small from-scratch Llama (2.6M parameters, BPE 4k): 800 rows, warm-up on the other 800, 10 epochs.
  small)   OUT=$ROOT/small
           TRAIN=(--model small --max_train 800 --warmup_rows 800 --warmup_epochs 8 --epochs 10
                  --learning_rate 1e-3 --batch_size 16 --probe_size 32) ;;
  *) echo "unknown model $MODEL (smollm2 or small)" >&2; exit 2 ;;
esac
bench() { dece-trainer bench "${LYRA_DATA[@]}" "${TRAIN[@]}" --losses ce,dece "$@"; }

# alpha_base 0.9: the largest alpha that stopped the embedded dead-code backdoor on validation data
# (docs/benchmark.md, "Choosing alpha"); ALPHA=... overrides it.
ALPHA=${ALPHA:-0.9}
# 1. BadPre at 20%, seeds 0, 1, 2 (train.csv poisoned by the package's BadPre, row-aligned with it): at the
#    released rates a model trained on a CPU budget is not backdoored at all, so this is the dose that tests
#    the defense.
P20=$ROOT/data/train_poisoned_20_badpre.csv
[ -f "$P20" ] || python3 benchmarks/poison_file.py "$L/train.csv" "$P20" --attack badpre --rate 0.2 \
    --source_column src --target_column tgt
for seed in 0 1 2; do
  bench --train_file "$P20" --alpha_bases "$ALPHA" --seeds $seed --output_dir "$OUT/p20"
done
# 2. The released files: 5%, then 2% and 1%, seed 0.
for rate in 5 2 1; do
  bench --train_file "$L/train_poisoned_${rate}_badpre.csv" --alpha_bases "$ALPHA" --seeds 0 --output_dir "$OUT/p$rate"
done
