"""``dece-trainer eval``: ASR, false-trigger rate, BLEU, CodeBLEU and exact match of a saved model."""

from __future__ import annotations

import argparse
import json
import os

from ..backdoor.experiment import TrainConfig, evaluate
from ..backdoor.models import load_pretrained
from ..backdoor.report import write_json
from .bench import add_data_arguments, load_benchmark


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure a saved model on a clean and a triggered test set",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="local folder or Hub id of a causal LM (or smollm2)")
    add_data_arguments(p)
    p.add_argument("--attack", default="fixed_deadcode", help="attack for the embedded task's triggered test set")
    p.add_argument("--max_test", type=int, default=None)
    p.add_argument("--max_source_tokens", type=int, default=256)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--output_dir", default="eval_out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_pretrained(args.model)
    benchmark = load_benchmark(argparse.Namespace(**{**vars(args), "probe_size": 1}), args.attack, 0.05, 0)
    cfg = TrainConfig(max_source_tokens=args.max_source_tokens, max_new_tokens=args.max_new_tokens,
                      eval_batch_size=args.eval_batch_size, max_test=args.max_test,
                      codebleu_lang=None if args.codebleu_lang == "none" else args.codebleu_lang)
    metrics = evaluate(model, tokenizer, benchmark.clean_test, benchmark.triggered_test, benchmark.payload_fn, cfg)
    record = {"model": args.model, "dataset": benchmark.name, **metrics}
    print("| metric | value |\n| --- | ---: |")
    for key in ("bleu", "codebleu", "exact_match", "asr", "false_trigger_rate", "n_clean", "n_triggered"):
        value = record[key]
        print(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "eval.json")
    write_json(path, record)
    print(json.dumps({"results": path}))
    return 0
