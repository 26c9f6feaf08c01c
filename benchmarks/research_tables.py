"""The tables and the alpha chart of docs/benchmark.md's GPU section ("On a GPU (NVIDIA H200)"), from the bench
folders `benchmarks/gpu.sh research` and `followup` write, and the per-folder `table.md` of any bench folder.

  python benchmarks/research_tables.py collect RUN_ROOT RESULTS_DIR   # copy results.json of every bench folder
                                                                      # and the DeCE reports' scores (compact JSON)
  python benchmarks/research_tables.py tables RESULTS_DIR [--output_dir DIR] [--chart PNG]
      # markdown to stdout; tables.md and tables.json into DIR (default: RESULTS_DIR)
  python benchmarks/research_tables.py table BENCH_DIR [--output PATH] [--epochs PATH]
      # a bench folder's table.md (to stdout without --output) and, with --epochs, its epochs.md, from its
      # results.json, as `dece-trainer bench` writes them
  python benchmarks/research_tables.py reuse SRC DST --match KEY_PART   # seed a new bench folder with finished cells

Tables: per setting, mean ± std over seeds of test ASR / FTR / BLEU / CodeBLEU / subtoken F1 and the report's
AUROC and precision at k, per loss; the filter's counts; the alpha sweep on the *validation* probes (last epoch);
the filter threshold rule's decisions on every DeCE report. A filter cell must name its fence (`filter.fence` in
its record): records written before the bench recorded it had it filled in afterwards, with a `fence_note`
saying how it was established; a record without one is refused rather than guessed.

Regenerate the committed tables:
  python benchmarks/research_tables.py tables benchmarks/results/gpu_h200_grid \
      --chart docs/images/benchmark/alpha_sweep_gpu.png
  python benchmarks/research_tables.py table benchmarks/results/cpu_filter_check \
      --output benchmarks/results/cpu_filter_check/table.md
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys

import numpy as np

from dece_trainer.backdoor.report import epoch_table, markdown_table, row_label
from dece_trainer.callbacks.poison_filter import choose_threshold
from dece_trainer.io import write_json, write_text

METRICS = (("asr", 100, "ASR %"), ("false_trigger_rate", 100, "FTR %"), ("bleu", 1, "BLEU"),
           ("codebleu", 1, "CodeBLEU"), ("subtoken_f1", 100, "F1 %"), ("report_auroc", 1, "report AUROC"),
           ("report_precision_at_k", 1, "report P@k"))


def collect(root: str, out: str) -> None:
    """Copy RUN_ROOT's results into RESULTS_DIR; a second session's folders join the first's (same names replaced)."""
    scores_path = os.path.join(out, "report_scores.json")
    scores = {}
    if os.path.isfile(scores_path):
        with open(scores_path, encoding="utf-8") as f:
            scores = json.load(f)
    for results in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
        name = os.path.basename(os.path.dirname(results))
        os.makedirs(os.path.join(out, name), exist_ok=True)
        shutil.copyfile(results, os.path.join(out, name, "results.json"))
        for report in glob.glob(os.path.join(os.path.dirname(results), "cells", "*-dece-*", "early_learning",
                                             "suspicious.jsonl")):
            with open(report, encoding="utf-8") as f:
                records = sorted((json.loads(line) for line in f), key=lambda r: r["example_id"])
            key = report.split(os.sep)[-3]
            scores[key] = {"score": [round(r["score"], 3) for r in records],
                           "poisoned": [bool(r["is_poisoned"]) for r in records]}
    write_json(scores_path, scores)


def reuse(src: str, dst: str, match: str) -> None:
    """Seed bench folder DST with SRC's finished cells whose key contains MATCH (their folders and records), so a
    `dece+filter` run in DST reuses their reports instead of training DeCE again. DST must not exist yet."""
    if os.path.exists(dst):
        raise SystemExit(f"{dst} exists: reuse seeds a new folder only")
    with open(os.path.join(src, "results.json"), encoding="utf-8") as f:
        records = [r for r in json.load(f)["cells"] if match in r["key"]]
    if not records:
        raise SystemExit(f"no finished cell of {src} has {match!r} in its key")
    for r in records:
        shutil.copytree(os.path.join(src, "cells", r["key"]), os.path.join(dst, "cells", r["key"]))
    write_json(os.path.join(dst, "results.json"), {"cells": records})


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def setting_of(r: dict) -> str:
    return f"{r['dataset']} / {r['attack']} / {r['poison_rate']:g}"


def fence_of(r: dict) -> float:
    """The filter's fence, as its record states it. Never guessed: the fence default changed (3.5, then 2.5) before
    records named it, so a filter record without one is refused."""
    fence = r["filter"].get("fence")
    if fence is None:
        raise SystemExit(f"cell {r['key']}: its filter record names no fence; record the fence it ran with "
                         "(with a fence_note saying how it is known) instead of leaving the reader to guess")
    return fence


def label_of(r: dict) -> str:
    if r.get("filter"):
        fence_of(r)
    return row_label(r)


def main_table(records: list[dict]) -> tuple[str, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((setting_of(r), label_of(r)), []).append(r)
    rows, lines = [], ["| setting | loss | seeds | " + " | ".join(h for _, _, h in METRICS) + " |",
                       "| --- | --- | ---: |" + " ---: |" * len(METRICS)]
    for (setting, label), cells in sorted(groups.items()):
        row = {"setting": setting, "loss": label, "seeds": len(cells)}
        for key, scale, _ in METRICS:
            row[key] = mean_std([c[key] * scale if c.get(key) is not None else None for c in cells])
        rows.append(row)
        lines.append(f"| {setting} | {label} | {len(cells)} | " + " | ".join(row[k] for k, _, _ in METRICS) + " |")
    return "\n".join(lines), rows


def filter_table(records: list[dict]) -> tuple[str, list[dict]]:
    lines = ["| setting | cell | seed | flagged | clean rows dropped | poisoned rows kept (of) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    rows = []
    for r in sorted((r for r in records if r.get("filter")), key=lambda r: (setting_of(r), label_of(r), r["seed"])):
        f = {**{k: v for k, v in r["filter"].items() if k != "fence_note"}, "fence": fence_of(r)}
        rows.append({"setting": setting_of(r), "loss": label_of(r), "seed": r["seed"], **f})
        lines.append(f"| {setting_of(r)} | {label_of(r)} | {r['seed']} | {f['flagged']} | {f['dropped_clean']} | "
                     f"{f['kept_poisoned']} ({f['poisoned']}) |")
    return "\n".join(lines), rows


def final_alpha(r: dict) -> float:
    if r["loss"] == "ce":
        return 1.0
    if r.get("alpha_final") is not None:
        return r["alpha_final"]
    epochs = r["config"]["training"]["epochs"]
    return r["alpha_base"] ** epochs


def sweep_table(records: list[dict]) -> tuple[str, list[dict]]:
    """Validation probes at the last epoch, per (setting, alpha), on the settings swept (mean over seeds)."""
    swept = {setting_of(r) for r in records if r["loss"] == "dece" and r.get("alpha_base") not in (0.9, None)}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if setting_of(r) in swept and r["loss"] in ("ce", "dece") and r.get("curves"):
            groups.setdefault((setting_of(r), row_label(r)), []).append(r)
    lines = ["| setting | loss | alpha at the last epoch | seeds | triggered validation ASR % | clean validation BLEU "
             "|",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    rows = []
    for (setting, label), cells in sorted(groups.items(), key=lambda kv: (kv[0][0], -final_alpha(kv[1][0]))):
        last = [c["curves"][-1] for c in cells]
        row = {"setting": setting, "loss": label, "final_alpha": round(final_alpha(cells[0]), 4), "seeds": len(cells),
               "asr": mean_std([100 * p["probe_triggered_asr"] for p in last]),
               "bleu": mean_std([p["probe_clean_bleu"] for p in last]),
               "asr_max": max(100 * p["probe_triggered_asr"] for p in last)}
        rows.append(row)
        lines.append(f"| {setting} | {label} | {row['final_alpha']:g} | {len(cells)} | {row['asr']} | {row['bleu']} |")
    return "\n".join(lines), rows


def rule_table(scores: dict) -> tuple[str, list[dict]]:
    """The filter's decision on every DeCE report under the modified z-score rule at fences 3.5 and 2.5."""
    rows = []
    for key, entry in sorted(scores.items()):
        s, p = np.array(entry["score"]), np.array(entry["poisoned"])
        row = {"cell": key, "poisoned": int(p.sum()), "rows": int(p.size)}
        for fence in (3.5, 2.5):
            flagged = s > choose_threshold(list(s), fence)
            row[f"kept_poisoned_{fence}"] = int((p & ~flagged).sum())
            row[f"dropped_clean_{fence}"] = int((~p & flagged).sum())
        rows.append(row)
    lines = ["| fence | reports | reports with no poisoned row kept | poisoned rows kept | clean rows dropped (of) |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    known = [r for r in rows if "-adaptive-" not in r["cell"]]  # the adaptive attack evades the report
    for fence in (3.5, 2.5):
        lines.append(f"| {fence} | {len(known)} | {sum(r[f'kept_poisoned_{fence}'] == 0 for r in known)} | "
                     f"{sum(r[f'kept_poisoned_{fence}'] for r in known)} of "
                     f"{sum(r['poisoned'] for r in known)} | "
                     f"{sum(r[f'dropped_clean_{fence}'] for r in known)} "
                     f"({sum(r['rows'] - r['poisoned'] for r in known)}) |")
    return "\n".join(lines), rows


def plot_sweep(rows: list[dict], path: str) -> None:
    from dece_trainer.plotting import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for setting in sorted({r["setting"] for r in rows}):
        points = sorted((r for r in rows if r["setting"] == setting), key=lambda r: r["final_alpha"])
        alphas = [r["final_alpha"] for r in points]
        left.plot(alphas, [float(r["asr"].split(" ")[0]) for r in points], "o-", label=setting, clip_on=False)
        right.plot(alphas, [float(r["bleu"].split(" ")[0]) for r in points], "s--", label=setting)
    left.set(title="triggered validation (last epoch)", xlabel="alpha at the last epoch (1 = CE)", ylabel="ASR %")
    left.set_ylim(0, 105)
    right.set(title="clean validation (last epoch)", xlabel="alpha at the last epoch (1 = CE)", ylabel="BLEU")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def tables(results_dir: str, chart: str | None, output_dir: str | None = None) -> None:
    """Print the tables, and write them (tables.md, tables.json) into ``output_dir`` (default ``results_dir``)."""
    records, seen = [], {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "results.json"))):
        with open(path, encoding="utf-8") as f:
            for r in json.load(f)["cells"]:  # a cell copied into another folder (`reuse`) counts once
                first = seen.setdefault((r["key"], r["config_hash"]), r)
                if first is r:
                    records.append(r)
                elif any(first.get(k) != r.get(k) for k, _, _ in METRICS):
                    raise SystemExit(f"cell {r['key']} appears twice with different results ({path})")
    out, markdown = {}, []
    for name, build in (("main", main_table), ("filter", filter_table), ("sweep", sweep_table)):
        text, out[name] = build(records)
        markdown.append(f"\n### {name}\n\n{text}\n")
    scores_path = os.path.join(results_dir, "report_scores.json")
    if os.path.isfile(scores_path):
        with open(scores_path, encoding="utf-8") as f:
            text, out["rules"] = rule_table(json.load(f))
        markdown.append(f"\n### rules\n\n{text}\n")
    print("".join(markdown), end="")
    output_dir = output_dir or results_dir
    write_text(os.path.join(output_dir, "tables.md"), "".join(markdown))
    write_json(os.path.join(output_dir, "tables.json"), out)
    if chart:
        plot_sweep(out["sweep"], chart)


def bench_table(bench_dir: str, output: str | None, epochs: str | None = None) -> str:
    """The bench's own `table.md` (the paper's layout) from BENCH_DIR/results.json, as `dece-trainer bench` writes
    it; to ``output`` if given, and its per-epoch `epochs.md` to ``epochs`` if given. Filter cells must name their
    fence, as in `tables`."""
    with open(os.path.join(bench_dir, "results.json"), encoding="utf-8") as f:
        records = json.load(f)["cells"]
    for r in records:
        label_of(r)
    text = markdown_table(records)
    if output:
        write_text(output, text)
    if epochs:
        write_text(epochs, epoch_table(records))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("root")
    c.add_argument("out")
    r = sub.add_parser("reuse")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("--match", required=True)
    t = sub.add_parser("tables")
    t.add_argument("results_dir")
    t.add_argument("--chart", default=None)
    t.add_argument("--output_dir", default=None, help="where tables.md and tables.json go (default: RESULTS_DIR)")
    b = sub.add_parser("table")
    b.add_argument("bench_dir")
    b.add_argument("--output", default=None, help="the markdown file to write (default: stdout only)")
    b.add_argument("--epochs", default=None, help="also write the per-epoch table (epochs.md) to this file")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.root, args.out)
    elif args.command == "reuse":
        reuse(args.src, args.dst, args.match)
    elif args.command == "table":
        text = bench_table(args.bench_dir, args.output, args.epochs)
        if not args.output:
            print(text, end="")
    else:
        tables(args.results_dir, args.chart, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
