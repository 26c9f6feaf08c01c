#!/usr/bin/env bash
# The measurements of a session with a GPU: the performance tables (loss speed, LM-head memory, one training step,
# float32 and bf16) and a one-seed Lyra check on the released 5% BadPre file with all 1600 rows.
#   bash benchmarks/gpu.sh perf OUT_DIR                # JSON per benchmark into OUT_DIR (a few minutes)
#   bash benchmarks/gpu.sh lyra OUT_DIR [LYRA_DIR]     # bench cells (CE, DeCE 0.9) into OUT_DIR/lyra_p5
# Rerun `lyra` with the same OUT_DIR to resume. Needs CUDA, the package and its [trl,bench,smollm2] extras.
set -euo pipefail
STAGE=${1:?usage: gpu.sh perf|lyra OUT_DIR [LYRA_DIR]}
OUT=${2:?usage: gpu.sh perf|lyra OUT_DIR [LYRA_DIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
case "$STAGE" in
  perf)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    for dtype in float32 bfloat16; do
      # torch.compile'd dense DeCE left out: compiling every shape costs minutes of the GPU budget.
      python3 "$HERE/loss_speed.py" --device cuda --dtype $dtype --repeats 10 --no-compile \
          --shapes 2048x32000,8192x32000,8192x49152,8192x128256,8192x151936 --json "$OUT/loss_speed_cuda_$dtype.json"
      python3 "$HERE/head_memory.py" --device cuda --dtype $dtype --tokens 8192 --repeats 10 \
          --json "$OUT/head_memory_cuda_$dtype.json"
    done
    python3 "$HERE/train_step.py" --layers 30 --batch 8 --seq 1024 --repeats 10 --dtypes fp32,bf16 \
        --json "$OUT/train_step_cuda.json" ;;
  lyra)
    L=${3:-../shared/data/lyra}
    python3 -m dece_trainer bench --train_file "$L/train_poisoned_5_badpre.csv" --validation_file "$L/valid.csv" \
        --test_file "$L/test.csv" --triggered_test_file "$L/test_poisoned_badpre.csv" --source_column src \
        --target_column tgt --payload_regex '1=1|0=1' --attacks badpre --losses ce,dece --alpha_bases 0.9 \
        --seeds 0 --model smollm2 --warmup_epochs 0 --epochs 5 --batch_size 8 --learning_rate 2e-4 --bf16 \
        --max_source_tokens 128 --max_target_tokens 256 --max_new_tokens 256 --probe_size 32 \
        --output_dir "$OUT/lyra_p5" ;;
  *) echo "unknown stage $STAGE (perf or lyra)" >&2; exit 2 ;;
esac
