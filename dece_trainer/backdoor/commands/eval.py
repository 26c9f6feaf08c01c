"""``dece-trainer eval``: ASR, false-trigger rate, BLEU, CodeBLEU and exact match of a saved causal LM or
encoder-decoder, on a clean and a triggered test set (files as released, or the embedded task)."""

from __future__ import annotations

import argparse
import json
import os

from ...data import check_data_source
from ...io import check_writable_folder
from ..attacks import ATTACKS
from ..checks import check_model, check_positive_ints, check_regex
from ..data import EMBEDDED_TASKS

DEFAULT_PAYLOAD_REGEX = "1=1|0=1"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure a saved model on a clean and a triggered test set",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="local folder or Hub id of a causal LM or encoder-decoder "
                   "(or smollm2)")
    g = p.add_argument_group("test sets: files as released, or the embedded task triggered by --attack")
    g.add_argument("--test_file", help="clean CSV/JSONL test set")
    g.add_argument("--triggered_test_file", help="triggered CSV/JSONL test set (targets carry the payload)")
    g.add_argument("--source_column", default="source", help="column holding the input")
    g.add_argument("--target_column", default="target", help="column holding the expected output")
    g.add_argument("--payload_regex", default=None,
                   help=f"with --test_file: regex that detects the payload in an output (default "
                        f"{DEFAULT_PAYLOAD_REGEX}); the embedded task's attack detects its own payload")
    g.add_argument("--dataset", default="method_name", choices=list(EMBEDDED_TASKS),
                   help="embedded task (without --test_file)")
    g.add_argument("--attack", default="fixed_deadcode", choices=list(ATTACKS),
                   help="attack that triggers the embedded task's test set")
    g.add_argument("--max_per_split", type=int, default=None, help="cap rows per split of the embedded task")
    p.add_argument("--max_test", type=int, default=None, help="evaluate on the first N rows of each test set")
    p.add_argument("--max_source_tokens", type=int, default=256, help="truncate inputs to this many tokens")
    p.add_argument("--max_new_tokens", type=int, default=64, help="generation length limit")
    p.add_argument("--eval_batch_size", type=int, default=32, help="generation batch size")
    p.add_argument("--codebleu_lang", default="python", choices=["python", "java", "none"],
                   help="language of CodeBLEU on the clean outputs (none: skip it)")
    p.add_argument("--output_dir", default="eval_out", help="where eval.json goes")
    p.set_defaults(func=run)


def validate(args: argparse.Namespace) -> None:
    """Every check that needs no data or model: run first (before the model code is even imported), so a bad
    flag, a missing file or an output folder that cannot be written fails at once, not after the evaluation."""
    if bool(args.test_file) != bool(args.triggered_test_file):
        raise ValueError("give both --test_file and --triggered_test_file, or neither (the embedded task)")
    check_positive_ints(args, ("max_source_tokens", "max_new_tokens", "eval_batch_size"))
    check_positive_ints(args, ("max_test", "max_per_split"), optional=True)
    if args.test_file:
        for flag in ("test_file", "triggered_test_file"):
            if not os.path.isfile(getattr(args, flag)):
                raise ValueError(f"--{flag}: data file not found: {getattr(args, flag)}")
            check_data_source(getattr(args, flag), f"--{flag}")
        if args.payload_regex is None:
            args.payload_regex = DEFAULT_PAYLOAD_REGEX
        check_regex(args.payload_regex)
    elif args.payload_regex is not None:
        raise ValueError("--payload_regex only applies with --test_file; the embedded task's attack "
                         f"{args.attack!r} detects its own payload")
    check_model(args.model, built_in=("smollm2",))
    check_writable_folder(args.output_dir, "--output_dir")


def run(args: argparse.Namespace) -> int:
    validate(args)
    from transformers import AutoConfig

    from ...io import inside, write_json
    from ..experiment import TrainConfig, evaluate
    from ..models import load_pretrained, resolve_model_path
    from ..tasks import embedded, load_test_sets, payload_detector

    path = resolve_model_path(args.model)
    seq2seq = bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))
    model, tokenizer = load_pretrained(path, seq2seq=seq2seq)
    if args.test_file:
        payload_fn = payload_detector(args.payload_regex)
        clean_test, triggered_test = load_test_sets(args.test_file, args.triggered_test_file, payload_fn,
                                                    args.payload_regex, args.source_column, args.target_column)
        name = os.path.splitext(os.path.basename(args.test_file))[0]
    else:
        benchmark = embedded(args.dataset, args.attack, 0.05, max_per_split=args.max_per_split, probe_size=1)
        clean_test, triggered_test, payload_fn, name = (benchmark.clean_test, benchmark.triggered_test,
                                                        benchmark.payload_fn, benchmark.name)
    cfg = TrainConfig(max_source_tokens=args.max_source_tokens, max_new_tokens=args.max_new_tokens,
                      eval_batch_size=args.eval_batch_size, max_test=args.max_test,
                      codebleu_lang=None if args.codebleu_lang == "none" else args.codebleu_lang)
    metrics = evaluate(model, tokenizer, clean_test, triggered_test, payload_fn, cfg)
    record = {"model": args.model, "dataset": name, **metrics}
    print("| metric | value |\n| --- | ---: |")
    for key in ("bleu", "codebleu", "exact_match", "asr", "false_trigger_rate", "n_clean", "n_triggered"):
        value = record[key]
        print(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    path = inside(args.output_dir, "eval.json")
    write_json(path, record)
    print(f"results: {path}")
    print(json.dumps({"results": path}))
    return 0
