"""Markdown tables for docs/performance.md and docs/early_learning.md from the benchmark scripts' JSON
(benchmarks/results/).

Usage: python benchmarks/tables.py [--cuda] [--output PATH] [NAME ...]   (default: every NAME whose JSON exists)
NAME: loss_speed, head_memory, train_step (docs/performance.md), callback_overhead (docs/performance.md),
early_learning (docs/early_learning.md, from benchmarks/early_learning_run.py's JSON).
``--cuda``: the GPU results (``*_cuda_*.json``) of the first three instead of the CPU ones.
``--output``: also write the markdown to PATH (stdout always gets it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dece_trainer.io import write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FILES = {"loss_speed": "loss_speed_cpu_float32.json", "head_memory": "head_memory_cpu_float32.json",
         "train_step": "train_step_cpu.json", "callback_overhead": "callback_overhead.json",
         "early_learning": "early_learning_run.json"}
CUDA_FILES = {"loss_speed": "loss_speed_cuda_bfloat16.json", "head_memory": "head_memory_cuda_bfloat16.json",
              "train_step": "train_step_cuda.json"}


def machine_line(m: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average", []))
    gpu = f" ({m['gpu']})" if m.get("gpu") else ""
    return (f"{m.get('cpu_model', '?')}, {m.get('cpu_cores', '?')} cores, AVX512: {m.get('avx512') or 'none'}, "
            f"torch {m.get('torch', '?')}, {m.get('device', '?')}{gpu}; load average before (1/5/15 min): {load}")


def loss_speed(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             "| N x V | method | min s | median s | vs label-smoothed CE | vs read-once floor | extra peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for shape in d["shapes"]:
        for name, r in shape["results"].items():
            if not isinstance(r, dict) or "min_s" not in r:
                continue
            lines.append(f"| {shape['tokens']} x {shape['vocab']} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r.get('vs_ce_ls', float('nan')):.2f}x | {r.get('vs_floor', float('nan')):.1f}x | "
                         f"{r.get('extra_peak_mib', float('nan')):.0f} |")
    return "\n".join(lines)


def head_memory(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             "| head | method | min s | median s | extra peak MiB | peak vs HF CE | peak vs TRL fused |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for head in d["heads"]:
        results = head["results"]
        hf = results.get("hf_ce", {}).get("extra_peak_mib")
        trl = results.get("trl_fused", {}).get("extra_peak_mib")
        for name, r in results.items():
            peak = r["extra_peak_mib"]
            vs = lambda ref: f"{peak / ref:.2f}x" if ref else "-"  # noqa: E731
            shape = f"{head['head']} (d={head['hidden_size']}, V={head['vocab']}, N={head['tokens']})"
            lines.append(f"| {shape} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | {peak:.0f} | {vs(hf)} | "
                         f"{vs(trl)} |")
    return "\n".join(lines)


def train_step(d: dict) -> str:
    lines = [machine_line(d["machine"]), "",
             f"SmolLM2-shaped Llama, {d['layers']} layers, batch {d['batch']} x {d['seq']} tokens "
             f"(prompt half masked), {d['repeats']} interleaved rounds after a warm-up", "",
             "| dtype | trainer | min s/step | median s/step | vs its stock trainer (min) | extra peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    stock = {"trainer": "trainer", "dece": "trainer", "dece_unfused": "trainer", "dece_switched": "trainer",
             "sft": "sft", "dece_sft": "sft"}
    for dtype, results in d["results"].items():
        for name, r in results.items():
            ref = results.get(stock.get(name, name), r)
            lines.append(f"| {dtype} | {name} | {r['min_s']:.3f} | {r['median_s']:.3f} | "
                         f"{r['min_s'] / ref['min_s']:.2f}x | {r['extra_peak_mib']:.0f} |")
    return "\n".join(lines)


def _spread(r: dict, digits: int = 4) -> str:
    """``median [min, max]``."""
    return f"{r['median']:.{digits}f} [{r['min']:.{digits}f}, {r['max']:.{digits}f}]"


def callback_overhead(d: dict) -> str:
    """benchmarks/callback_overhead.py's tables: per step, per epoch, per checkpoint (median, min, max over the
    rounds). A record of the script's first version (before the measurement was split; no ``per_step``) renders
    as it did, with its ``note``."""
    if "per_step" not in d:
        return _callback_overhead_v1(d)
    m = d["machine"]
    load_end = ", ".join(f"{x:.2f}" for x in m.get("load_average_end", []))
    lines = [f"{d['description']}; {d['parameters'] / 1e6:.2f}M parameters, batch {d['batch']}, "
             f"{d['warmup_steps']} warm-up + {d['steps']} timed steps a run, {d['repeats']} interleaved rounds "
             "(median [min, max] over the rounds)",
             f"{machine_line(m)}; after: {load_end}; transformers {m.get('transformers', '?')}, AVX512-BF16: "
             f"{'yes' if m.get('avx512_bf16') else 'no'}", f"`{d['command']}` ({d['seconds'] / 60:.1f} min)", "",
             "| per training step | s/step without: median [min, max] | s/step with: median [min, max] | "
             "overhead (ratio of medians) |", "| --- | --- | --- | ---: |"]
    for name, r in d["per_step"].items():
        path = {True: " (fused)", False: " (unfused)"}.get(r.get("fused"), "")
        tokens = ", worst tokens tracked" if r.get("worst_tokens") else ""
        lines.append(f"| {name}{path}{tokens} | {_spread(r['without'])} | {_spread(r['with'])} | "
                     f"{100 * r['overhead']:+.1f}% |")
    e = d["per_epoch"]
    lines += ["", f"| per epoch ({e['rows_seen']} of {e['rows']} rows seen; an epoch is {e['steps_per_epoch']} "
                  "steps) | seconds: median [min, max] | share of an epoch's training |", "| --- | --- | ---: |"]
    share = e.get("share_of_epoch", {})
    for name, r in e["epoch_end"].items():
        cell = f"{100 * share['epoch_end']:.2f}%" if name == "DeCETrainer" and "epoch_end" in share else "-"
        lines.append(f"| epoch end (on_epoch_end), {name} | {_spread(r)} | {cell} |")
    if "probe_evaluation" in e:
        rows = " + ".join(f"{n} {k}" for n, k in e["probe_rows"].items())
        lines.append(f"| probe evaluation (on_evaluate: {rows} rows, max_new_tokens {e['max_new_tokens']}) | "
                     f"{_spread(e['probe_evaluation'])} | {100 * share['probe_evaluation']:.2f}% |")
    for name, r in e["train_end_report"].items():
        lines.append(f"| train end: the report (on_train_end, no plots), {name} | {_spread(r)} | - |")
    c = d.get("checkpoint")
    if c:
        lines += ["", "| per checkpoint (DeCETrainer) | seconds: median [min, max] | trainer_state.json | "
                      "checkpoint |", "| --- | --- | ---: | ---: |",
                  f"| the callback's state encoding (on_step_end before a save) | {_spread(c['state_encode'])} | - "
                  "| - |"]
        for side in ("without", "with"):
            lines.append(f"| _save_checkpoint {side} the callback's state | {_spread(c[f'write_{side}'])} | "
                         f"{c[f'trainer_state_bytes_{side}'] / 1024:.1f} KiB | "
                         f"{c[f'checkpoint_bytes_{side}'] / 2**20:.1f} MiB |")
        lines.append(f"| with / without (ratio of medians) | {c['ratio']:.3f}x | - | - |")
        for side in ("without", "with"):
            if f"state_json_{side}" in c:
                lines.append(f"| trainer_state.json alone, {side} the callback's state | "
                             f"{_spread(c[f'state_json_{side}'])} | - | - |")
    if d.get("note"):
        lines += ["", f"Note: {d['note']}"]
    return "\n".join(lines)


def _callback_overhead_v1(d: dict) -> str:
    lines = [f"tiny Llama ({d['parameters'] / 1e6:.2f}M parameters, hidden {d['hidden']}, 4 layers), batch 8, "
             f"{d['steps']} steps x {d['repeats']} alternating repeats (median); torch {d['torch']}, {d['cpus']} CPUs",
             "", "| trainer | s/step without | s/step with EarlyLearningCallback | overhead |",
             "| --- | ---: | ---: | ---: |"]
    for name, r in d["results"].items():
        lines.append(f"| {name} | {r['seconds_per_step']:.4f} | {r['seconds_per_step_with_callback']:.4f} | "
                     f"{100 * r['overhead']:+.1f}% |")
    if d.get("note"):
        lines += ["", f"Note: {d['note']}"]
    return "\n".join(lines)


# early_learning_run.json's columns; suspicious_auroc / _precision_at_k rank by whichever score the run's version
# of the monitor used, named by the record's "ranking_score" ("token" from the version that records it on).
EARLY_KEYS = ("epoch", "example_loss_p50", "example_loss_p99", "unlearned_frac", "memorisation_score",
              "suspicious_auroc", "suspicious_precision_at_k", "probe_clean_bleu", "probe_triggered_asr",
              "probe_clean_asr")


def early_learning(d: dict) -> str:
    """benchmarks/early_learning_run.py's per-epoch table (every epoch of both runs)."""
    score = d.get("ranking_score")
    if score is None:
        raise SystemExit("early_learning_run.json does not say which score its suspicious_* columns rank by "
                         "(ranking_score); rerun benchmarks/early_learning_run.py")
    a = d["args"]
    header = [k if not k.startswith("suspicious_") else f"{k} ({score} score)" for k in EARLY_KEYS]
    lines = [f"tiny Llama, 200 training pairs (10 poisoned), {a['epochs']} epochs, CE vs DeCE "
             f"(alpha_base={a['alpha_base']}, e=0.05), seed {a['seed']}", "",
             "| run | " + " | ".join(header) + " |", "| --- " * (len(EARLY_KEYS) + 1) + "|"]
    for row in d["rows"]:
        cells = [f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in EARLY_KEYS]
        lines.append(f"| {row['run']} | " + " | ".join(cells) + " |")
    if d.get("note"):
        lines += ["", f"Note: {d['note']}"]
    return "\n".join(lines)


def render(name: str, cuda: bool = False) -> str | None:
    """The markdown of one table from its committed JSON, or None when the JSON does not exist."""
    files = CUDA_FILES if cuda else FILES
    path = os.path.join(RESULTS, files[name])
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f"### {name} ({os.path.relpath(path)})\n\n{globals()[name](json.load(f))}\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(FILES))
    parser.add_argument("--cuda", action="store_true", help="the GPU JSON (loss_speed, head_memory, train_step)")
    parser.add_argument("--output", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    files = CUDA_FILES if args.cuda else FILES
    unknown = [n for n in args.names if n not in files]
    if unknown:
        parser.error(f"unknown table {', '.join(unknown)} (with{'' if args.cuda else 'out'} --cuda: "
                     f"{', '.join(files)})")
    out = [text for text in (render(name, args.cuda) for name in args.names or list(files)) if text is not None]
    print("\n".join(out))
    if args.output:
        write_text(args.output, "\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
