"""The tables of docs/benchmark.md's "One run, every attacker" section, from the bench folders that
`benchmarks/cpu_defense.sh` writes (one folder per attack), and the check of issue 20's goals on them.

  python benchmarks/defense_table.py collect RUN_ROOT RESULTS_DIR   # results.json, table.md and every cell's
                                                                     # reports and decision (no checkpoints)
  python benchmarks/defense_table.py tables RESULTS_DIR [--output_dir DIR]
      # markdown to stdout; defense.md and defense.json into DIR (default: RESULTS_DIR)

Per setting (dataset / attack / poison rate) and loss: test ASR, FTR, BLEU, CodeBLEU, subtoken F1, exact match,
the suspicious-example report's AUROC and precision at k (the ranking the cell's defense reads: combined, and each
signal's own where the report kept it), the rows a ``dece+continue`` cell dropped and kept, and its training
time against the CE cell of the same setting. The goals table compares ``dece+continue`` with CE of the same
setting: ASR <= 2%; BLEU, CodeBLEU, F1 and exact match within 1 point; training time <= 1.15x; the combined report
at AUROC >= 0.95 and precision at k >= 0.8. A goal whose cells have not run reads "-", never "met".

Training time is the cell's own wall clock (``train_seconds``: training, the monitor and its probes, in both
cells), so its ratio is only as good as the machine was idle during both cells; the records say when they ran.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

from research_tables import bench_table

from dece_trainer.io import write_json, write_text

CONTINUE = "dece+continue"
# (record key, scale, column header)
METRICS = (("asr", 100, "ASR %"), ("false_trigger_rate", 100, "FTR %"), ("bleu", 1, "BLEU"),
           ("codebleu", 1, "CodeBLEU"), ("subtoken_f1", 100, "F1 %"), ("exact_match", 100, "EM %"),
           ("report_auroc", 1, "report AUROC"), ("report_precision_at_k", 1, "report P@k"),
           ("token_report_auroc", 1, "token AUROC"), ("token_report_precision_at_k", 1, "token P@k"),
           ("audit_report_auroc", 1, "audit AUROC"), ("audit_report_precision_at_k", 1, "audit P@k"))
QUALITY = (("bleu", 1), ("codebleu", 1), ("subtoken_f1", 100), ("exact_match", 100))  # within 1 point of CE
REPORTS = ("fingerprint.json", "early_learning/suspicious.jsonl", "early_learning/worst_tokens.npz",
           "dece_continue/suspicious.jsonl", "dece_continue/decision.json")
MAX_ASR, MAX_QUALITY_DROP, MAX_TIME_RATIO, MIN_AUROC, MIN_PRECISION = 0.02, 1.0, 1.15, 0.95, 0.8


def collect(root: str, out: str) -> None:
    """Copy every bench folder of RUN_ROOT into RESULTS_DIR: its results.json, its table.md regenerated, and each
    cell's reports and decision (`REPORTS`); a folder already there is updated, cells it has are kept."""
    for results in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
        src = os.path.dirname(results)
        dst = os.path.join(out, os.path.basename(src))
        os.makedirs(dst, exist_ok=True)
        shutil.copyfile(results, os.path.join(dst, "results.json"))
        bench_table(dst, os.path.join(dst, "table.md"))
        for cell in sorted(glob.glob(os.path.join(src, "cells", "*"))):
            for name in REPORTS:
                path = os.path.join(cell, name)
                if os.path.isfile(path):
                    target = os.path.join(dst, os.path.basename(cell), name)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(path, target)


def load(results_dir: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "results.json"))):
        with open(path, encoding="utf-8") as f:
            for r in json.load(f)["cells"]:
                records.append({**r, "folder": os.path.basename(os.path.dirname(path))})
    return records


def setting_of(r: dict) -> str:
    return f"{r['dataset']} / {r['attack']} / {r['poison_rate']:g}"


def loss_of(r: dict) -> str:
    """The loss, and where a dece+continue cell switched to CE (0: before training, on the data audit alone)."""
    switch = (r.get("continue") or {}).get("switch_epoch")
    return r["loss"] if switch is None else f"{r['loss']} (switch {switch})"


def fmt(value: float | None, scale: float = 1) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def cell_table(records: list[dict]) -> tuple[str, list[dict]]:
    """One row per cell (one seed each here): the metrics, the drop counts and the time against CE."""
    ce_time = {(setting_of(r), r["seed"]): r["train_seconds"] for r in records if r["loss"] == "ce"}
    head = ["setting", "seed", "loss", *(h for _, _, h in METRICS), "dropped (poisoned of)", "train min", "x CE"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 3 + " ---: |" * (len(head) - 3)]
    rows = []
    for r in sorted(records, key=lambda r: (setting_of(r), r["seed"], loss_of(r))):
        cont = r.get("continue") or {}
        ce = ce_time.get((setting_of(r), r["seed"]))
        audit = r["config"]["training"].get("audit", False)  # without the audit, the report is the token signal's
        metrics = {k: r.get(k if audit or not k.startswith("token_") else k.removeprefix("token_"))
                   for k, _, _ in METRICS}
        row = {"setting": setting_of(r), "seed": r["seed"], "loss": loss_of(r), "key": r["key"], "audit": audit,
               **metrics, "continue": cont or None,
               "train_seconds": r["train_seconds"], "time_vs_ce": r["train_seconds"] / ce if ce else None,
               "finished": r.get("finished")}
        rows.append(row)
        dropped = (f"{cont['flagged']} ({cont['poisoned'] - cont['kept_poisoned']} of {cont['poisoned']})"
                   if cont else "-")
        lines.append(f"| {row['setting']} | {r['seed']} | {row['loss']} | "
                     + " | ".join(fmt(metrics[k], s) for k, s, _ in METRICS)
                     + f" | {dropped} | {r['train_seconds'] / 60:.1f} | {fmt(row['time_vs_ce'])} |")
    return "\n".join(lines), rows


def goals_table(records: list[dict]) -> tuple[str, list[dict]]:
    """``dece+continue`` against CE of the same setting and seed: each goal met (yes), missed (no, with the
    number) or not yet measured (-)."""
    by = {(setting_of(r), r["seed"], loss_of(r)): r for r in records}
    head = ["setting", "seed", "cell", "ASR <= 2%", *(f"{k} within 1 of CE" for k, _ in QUALITY), "time <= 1.15x CE",
            "report AUROC >= 0.95", "report P@k >= 0.8"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows = []
    for (setting, seed, loss), r in sorted(by.items()):
        if not loss.startswith(CONTINUE):
            continue
        ce = by.get((setting, seed, "ce"))
        row = {"setting": setting, "seed": seed, "loss": loss,
               "asr": [r["asr"] <= MAX_ASR, r["asr"] * 100]}
        for key, scale in QUALITY:
            drop = None if ce is None or r.get(key) is None or ce.get(key) is None else (ce[key] - r[key]) * scale
            row[key] = None if drop is None else [drop <= MAX_QUALITY_DROP, -drop]
        row["time"] = None if ce is None else [r["train_seconds"] / ce["train_seconds"] <= MAX_TIME_RATIO,
                                               r["train_seconds"] / ce["train_seconds"]]
        row["report_auroc"] = [r["report_auroc"] >= MIN_AUROC, r["report_auroc"]]
        row["report_precision_at_k"] = [r["report_precision_at_k"] >= MIN_PRECISION, r["report_precision_at_k"]]
        rows.append(row)
        cells = [_verdict(row[k]) for k in ("asr", *(k for k, _ in QUALITY), "time", "report_auroc",
                                            "report_precision_at_k")]
        lines.append(f"| {setting} | {seed} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def _verdict(check: list | None) -> str:
    if check is None:
        return "-"
    met, value = check
    return f"{'yes' if met else 'no'} ({value:+.2f})" if isinstance(value, float) and value < 0 else \
        f"{'yes' if met else 'no'} ({value:.2f})"


def tables(results_dir: str, output_dir: str | None = None) -> str:
    records = load(results_dir)
    cells_md, cells = cell_table(records)
    goals_md, goals = goals_table(records)
    text = (f"### Every cell\n\n{cells_md}\n\n### The goals: dece+continue against CE\n\n"
            "Quality columns give dece+continue minus CE, in points (BLEU, CodeBLEU; F1 and exact match in %); time "
            f"the ratio of the cells' wall clocks.\n\n{goals_md}\n")
    out = output_dir or results_dir
    write_text(os.path.join(out, "defense.md"), text)
    write_json(os.path.join(out, "defense.json"), {"cells": cells, "goals": goals})
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("root")
    c.add_argument("out")
    t = sub.add_parser("tables")
    t.add_argument("results_dir")
    t.add_argument("--output_dir", default=None, help="where defense.md and defense.json go (default: RESULTS_DIR)")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.root, args.out)
    else:
        print(tables(args.results_dir, args.output_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
