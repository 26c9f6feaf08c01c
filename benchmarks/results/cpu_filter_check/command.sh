set -e
cd /work/main
export HF_HUB_OFFLINE=1
dece-trainer bench --dataset method_name --attacks fixed_deadcode --poison_rates 0.05 --max_new_tokens 8 \
  --max_target_tokens 12 --model smollm2 --max_per_split 300 --warmup_epochs 1 --epochs 2 --max_test 150 \
  --probe_size 24 --learning_rate 1e-4 --batch_size 8 --max_source_tokens 128 \
  --losses dece,dece+filter,ce --alpha_bases 0.9 --seeds 1 --output_dir runs/research/cpu_filter
# Then, on the same folder (resumed): DeCE at the package default, the filter on it, and the baselines
# (onion left out: its leave-one-out scoring takes hours on 2 cores).
dece-trainer bench --dataset method_name --attacks fixed_deadcode --poison_rates 0.05 --max_new_tokens 8 \
  --max_target_tokens 12 --model smollm2 --max_per_split 300 --warmup_epochs 1 --epochs 2 --max_test 150 \
  --probe_size 24 --learning_rate 1e-4 --batch_size 8 --max_source_tokens 128 \
  --losses dece,dece+filter,gce,lowlr,ls --alpha_finals 0.5 --seeds 1 --output_dir runs/research/cpu_filter
