set -e
cd /work/main
export HF_HUB_OFFLINE=1
dece-trainer bench --dataset method_name --attacks grammar_deadcode --poison_rates 0.05 --max_new_tokens 8 \
  --max_target_tokens 12 --model smollm2 --max_per_split 300 --warmup_epochs 1 --epochs 2 --max_test 150 \
  --probe_size 24 --learning_rate 1e-4 --batch_size 8 --max_source_tokens 128 \
  --losses ce,dece,dece+filter --alpha_finals 0.5 --seeds 1 --output_dir runs/research/cpu_filter_grammar
