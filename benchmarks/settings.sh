# shellcheck shell=bash
# The benchmark settings that the scripts share (docs/benchmark.md states them in full). Source this file;
# precision (--bf16 / --no-bf16) is each script's own choice.

# The embedded method_name task with both dead-code attacks at 5%: the demo's settings, SmolLM2 warm-started.
EMBEDDED=(--dataset method_name --attacks fixed_deadcode,grammar_deadcode --poison_rates 0.05 --max_new_tokens 8
          --max_target_tokens 12 --model smollm2 --max_per_split 300 --warmup_epochs 1 --epochs 2 --max_test 150
          --probe_size 24 --learning_rate 1e-4 --batch_size 8 --max_source_tokens 128)

# Budgeted Lyra with SmolLM2: 240 training rows (the file's poison share), CE warm-up on 240 other clean rows,
# 5 epochs. (A first try at lr 1e-4, 320 rows, 3 epochs left CE's ASR at 0: the backdoor was never planted.)
LYRA_SMOLLM2=(--model smollm2 --max_train 240 --warmup_rows 240 --warmup_epochs 1 --epochs 5 --learning_rate 3e-4
              --batch_size 8 --probe_size 24)

lyra_data() {  # LYRA_DATA: Lyra's files in folder $1 for attack $2, triggered test file $3; test on 100 rows
  LYRA_DATA=(--validation_file "$1/valid.csv" --test_file "$1/test.csv" --triggered_test_file "$3"
             --source_column src --target_column tgt --payload_regex '1=1|0=1' --attacks "$2"
             --warmup_file "$1/train.csv" --max_source_tokens 128 --max_target_tokens 192 --max_new_tokens 160
             --max_test 100)
}
