#!/usr/bin/env bash
# The budgeted CPU Lyra reproduction (SmolLM2-135M, 2 CPU cores): every command that made the Lyra tables
# in docs/benchmark.md. Resumable: rerun it and finished cells are skipped.
#   bash benchmarks/lyra_cpu.sh [output root, default runs/lyra_cpu]
set -euo pipefail
L=${LYRA_DIR:-../shared/data/lyra}
OUT=${1:-runs/lyra_cpu}
COMMON=(--validation_file "$L/valid.csv" --test_file "$L/test.csv" --triggered_test_file "$L/test_poisoned_badpre.csv"
        --source_column src --target_column tgt --payload_regex '1=1|0=1' --attacks badpre
        --max_train 320 --warmup_file "$L/train.csv" --warmup_rows 320 --warmup_epochs 1
        --model smollm2 --epochs 3 --learning_rate 1e-4 --batch_size 8 --bf16
        --max_source_tokens 128 --max_target_tokens 192 --max_new_tokens 160 --max_test 100 --probe_size 32)

# 1. 5% BadPre, seed 0: CE and DeCE at two alphas (the paper's 0.985 and 0.9).
dece-trainer bench --train_file "$L/train_poisoned_5_badpre.csv" "${COMMON[@]}" \
    --losses ce,dece --alpha_bases 0.985,0.9 --seeds 0 --output_dir "$OUT/p5"
# 2. alpha chosen on the validation probes of step 1 (benchmarks/choose_alpha.py states the rule).
ALPHA=$(python3 benchmarks/choose_alpha.py "$OUT/p5/results.json" | python3 -c "import json,sys; print(json.load(sys.stdin)['alpha_base'])")
echo "chosen alpha_base: $ALPHA"
# 3. seeds 1 and 2 at 5% with the chosen alpha.
dece-trainer bench --train_file "$L/train_poisoned_5_badpre.csv" "${COMMON[@]}" \
    --losses ce,dece --alpha_bases "$ALPHA" --seeds 1,2 --output_dir "$OUT/p5"
# 4. 2% and 1%, seed 0.
for rate in 2 1; do
  dece-trainer bench --train_file "$L/train_poisoned_${rate}_badpre.csv" "${COMMON[@]}" \
      --losses ce,dece --alpha_bases "$ALPHA" --seeds 0 --output_dir "$OUT/p$rate"
done
