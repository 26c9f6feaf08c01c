#!/usr/bin/env bash
# The measurements of a session with a GPU: the performance tables (loss speed, LM-head memory, one training step,
# bf16), and the research grid (CE / DeCE / DeCE+filter and baselines, 3 seeds, and the alpha sweep), published as
# benchmarks/results/gpu_h200_grid/ (python benchmarks/research_tables.py collect OUT_DIR benchmarks/results/gpu_h200_grid).
#   bash benchmarks/gpu.sh perf OUT_DIR                   # JSON per benchmark into OUT_DIR (a few minutes)
#   bash benchmarks/gpu.sh research OUT_DIR [LYRA_DIR]    # bench folders into OUT_DIR ($BUDGET s, default 480)
#   bash benchmarks/gpu.sh followup OUT_DIR [LYRA_DIR]    # the second session's runs, beside research's folders
# Rerun a stage with the same OUT_DIR to resume. Needs CUDA, the package and its [trl,bench,smollm2] extras.
set -euo pipefail
STAGE=${1:?usage: gpu.sh perf|research|followup OUT_DIR [LYRA_DIR]}
OUT=${2:?usage: gpu.sh perf|research|followup OUT_DIR [LYRA_DIR]}
L=${3:-../shared/data/lyra}
HERE=$(cd "$(dirname "$0")" && pwd)
BUDGET=${BUDGET:-480}
D=$OUT/data
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"

prepare() {  # the model and the embedded task's rows, once; Lyra's training set poisoned at 20% by each attack in $@
  python3 -c "from dece_trainer.backdoor.models import smollm2_checkpoint as m; m()
from dece_trainer.backdoor.data import build_stdlib_task as t; t()"
  for attack in "$@"; do
    [ -f "$D/train_poisoned_20_$attack.csv" ] || python3 "$HERE/poison_file.py" "$L/train.csv" \
        "$D/train_poisoned_20_$attack.csv" --attack "$attack" --rate 0.2 --source_column src --target_column tgt
  done
}
source "$HERE/settings.sh"
EMBEDDED+=(--bf16)
lyra() {  # LY: the budgeted Lyra setting of lyra_cpu.sh (bf16) for attack $1, triggered test file $2
  lyra_data "$L" "$1" "$2"
  LY=("${LYRA_DATA[@]}" "${LYRA_SMOLLM2[@]}" --bf16 --train_file "$D/train_poisoned_20_$1.csv")
}
# One bench process per (job, seed), each in its own folder (results.json is rewritten by one process only); the
# processes run side by side (a 135M model leaves the GPU mostly idle), each resumable, $BUDGET seconds bound them.
job() {
  local name=$1 seed=$2; shift 2
  timeout "$BUDGET" python3 -m dece_trainer bench "$@" --seeds "$seed" --output_dir "$OUT/$name-s$seed" \
      > "$OUT/$name-s$seed.log" 2>&1 || echo "$name-s$seed ended with status $?"
}

case "$STAGE" in
  perf)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    # bf16 (what a GPU user trains in); torch.compile'd dense DeCE left out: compiling costs minutes per shape.
    python3 "$HERE/loss_speed.py" --device cuda --dtype bfloat16 --repeats 10 --no-compile \
        --shapes 8192x32000,8192x49152,8192x128256,8192x151936 --json "$OUT/loss_speed_cuda_bfloat16.json"
    python3 "$HERE/head_memory.py" --device cuda --dtype bfloat16 --tokens 8192 --repeats 10 \
        --json "$OUT/head_memory_cuda_bfloat16.json"
    python3 "$HERE/train_step.py" --layers 30 --batch 8 --seq 1024 --repeats 10 --dtypes bf16 \
        --json "$OUT/train_step_cuda.json" ;;
  research)
    # 3 seeds: CE, DeCE (alpha_base 0.9) and DeCE+filter on Lyra BadPre 20% (plus ONION), on the embedded task and
    # against the adaptive attacker at 10%; the alpha sweep on the embedded task.
    prepare badpre
    lyra badpre "$L/test_poisoned_badpre.csv"
    for seed in 0 1 2; do
      job lyra $seed "${LY[@]}" --losses ce,dece,dece+filter --alpha_bases 0.9 &
      job lyra_onion $seed "${LY[@]}" --losses onion &
      job method_name $seed "${EMBEDDED[@]}" --losses ce,dece,dece+filter --alpha_bases 0.9 &
      job adaptive $seed "${EMBEDDED[@]}" --attacks adaptive --poison_rates 0.1 --losses ce,dece,dece+filter \
          --alpha_bases 0.9 &
      job sweep $seed "${EMBEDDED[@]}" --losses dece --alpha_bases 0.985,0.95,0.8 --alpha_finals 0.5 &
    done
    wait ;;
  followup)
    # What research's device time did not reach, into its OUT_DIR (its lyra-s* folders resume their dece+filter
    # cells; filter-s* start from copies of sweep-s*'s finished alpha_final 0.5 dece cells, whose reports the
    # filter reuses): DeCE at the package default (alpha_final 0.5) and DeCE+filter on it (fence 2.5) on every setting,
    # the baselines ls / gce / lowlr / onion on the embedded task and ls / gce / lowlr on Lyra, and Lyra's RIPPLe
    # and Grammar attacks at 20% (seed 0). One thread per process: up to 31 processes share 16 cores (the second
    # session ran the 22 without Lyra's baselines in 9 minutes; a rerun finds most cells done).
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    prepare badpre ripple grammar
    for attack in ripple grammar; do
      [ -f "$D/test_triggered_$attack.csv" ] || python3 "$HERE/poison_file.py" "$L/test.csv" \
          "$D/test_triggered_$attack.csv" --attack $attack --triggered --source_column src --target_column tgt
    done
    for seed in 0 1 2; do  # the filter's first stage: research's finished alpha_final 0.5 DeCE cells
      [ -e "$OUT/filter-s$seed" ] || [ ! -f "$OUT/sweep-s$seed/results.json" ] || python3 "$HERE/research_tables.py" \
          reuse "$OUT/sweep-s$seed" "$OUT/filter-s$seed" --match=-dece-f0.5-
    done
    lyra badpre "$L/test_poisoned_badpre.csv"
    for seed in 0 1 2; do
      job lyra $seed "${LY[@]}" --losses ce,dece,dece+filter --alpha_bases 0.9 &
      job lyra_default $seed "${LY[@]}" --losses dece,dece+filter --alpha_finals 0.5 &
      for loss in ls gce lowlr; do job "lyra_$loss" $seed "${LY[@]}" --losses $loss & done
      job filter $seed "${EMBEDDED[@]}" --losses dece,dece+filter --alpha_finals 0.5 &
      job adaptive_default $seed "${EMBEDDED[@]}" --attacks adaptive --poison_rates 0.1 --losses dece,dece+filter \
          --alpha_finals 0.5 &
      for attack in fixed_deadcode grammar_deadcode; do
        job "baselines_$attack" $seed "${EMBEDDED[@]}" --attacks $attack --losses ls,gce,lowlr,onion &
      done
    done
    for attack in ripple grammar; do
      lyra $attack "$D/test_triggered_$attack.csv"
      job "lyra_${attack}_ce" 0 "${LY[@]}" --losses ce &
      job "lyra_${attack}_dece" 0 "${LY[@]}" --losses dece --alpha_finals 0.5 &
    done
    wait ;;
  *) echo "unknown stage $STAGE (perf, research or followup)" >&2; exit 2 ;;
esac
