"""The tables of docs/benchmark.md's "One run, every attacker" section, from the bench folders that
`benchmarks/cpu_defense.sh` writes (one folder per attack), and the check of issue 20's goals on them.

  python benchmarks/defense_table.py collect RUN_ROOT RESULTS_DIR   # results.json, table.md and every cell's
                                                                     # reports and decision (no checkpoints)
  python benchmarks/defense_table.py tables RESULTS_DIR [--output_dir DIR] [--chart PNG] [--doc MD]
      # markdown to stdout; defense.md and defense.json into DIR (default: RESULTS_DIR); the chart draws each
      # setting's ASR and clean BLEU per cell; --doc replaces the table under MD's `DOC_HEADING` (the first
      # table after that heading) with the every-cell table

Per setting (dataset / attack / poison rate) and loss: test ASR, FTR, BLEU, CodeBLEU, subtoken F1, exact match,
the suspicious-example report's AUROC and precision at k (the ranking the cell's defense reads: combined, and each
signal's own where the report kept it), the rows a ``dece+continue`` cell dropped and kept, and its training
time against the CE cell of the same setting. The goals table compares ``dece+continue`` with CE of the same
setting: ASR <= 2%; BLEU, CodeBLEU, F1 and exact match within 1 point; training time <= 1.15x; the report the
switch read at AUROC >= 0.95 and precision at k >= 0.8 (combined with the audit; the audit's alone for a switch
before training). A goal whose cells have not run, or cannot be compared, reads "-", never "met".

Training time is the cell's own wall clock (``train_seconds``: the audit, training, the monitor and its probes, in
both cells; not the warm-up model a seed's first cell builds), so its ratio is only as good as the machine was idle
during both cells. It is left out ("-") for a cell that resumed (its clock counts from the resume) and for records
written before the bench recorded that (``resumed`` absent: their clock may hold the warm-up). CE and the cell it is
compared with must share every setting but the defense's own (`DEFENSE_SETTINGS`; else "-").
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
from dece_trainer.outliers import AUDIT_CONFIDENCE, top_z

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
DOC_HEADING = "### Every cell (seed 1)"  # docs/benchmark.md's copy of the every-cell table sits under it
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


def timed(r: dict) -> bool:
    """Whether the record's ``train_seconds`` is the training's alone, uninterrupted."""
    return r.get("resumed") is False


DEFENSE_SETTINGS = ("audit", "switch_epoch", "audit_confidence")


def comparable(a: dict, b: dict) -> bool:
    """Whether two cells ran with the same settings but the defense's own (``audit``, ``switch_epoch``,
    ``audit_confidence``)."""
    def core(r: dict) -> dict:
        config = r.get("config") or {}
        training = {k: v for k, v in (config.get("training") or {}).items() if k not in DEFENSE_SETTINGS}
        return {**config, "training": training}
    return core(a) == core(b)


def setting_of(r: dict) -> str:
    return f"{r['dataset']} / {r['attack']} / {r['poison_rate']:g}"


def audit_top_z(results_dir: str, r: dict) -> float:
    """The largest robust z-score of the audit's scores in a switch-before-training cell's report
    (``dece_continue/suspicious.jsonl``): what ContinueWithCE's guard reads."""
    path = os.path.join(results_dir, r["folder"], r["key"], "dece_continue", "suspicious.jsonl")
    with open(path, encoding="utf-8") as f:
        scores = [json.loads(line)["score"] for line in f if line.strip()]
    return top_z(scores)


def guarded(records: list[dict], results_dir: str) -> tuple[list[dict], list[str]]:
    """The library default's run of each setting and seed with a switch-before-training cell. ContinueWithCE's
    guard lets the audit decide before training only where its top robust z reaches `AUDIT_CONFIDENCE`, and
    otherwise decides at the end of epoch 1, so the guarded run is the unguarded switch-0 cell (top z reaching it:
    the same decision, the same run) or the switch-1 cell (tested equal, weights and rows:
    tests/test_continue_ce.py::test_an_unconfident_audit_waits_for_epoch_1_as_switch_epoch_1_does). Returns those
    cells relabelled (``guarded_label``, ``audit_top_z``), and the settings whose switch-1 cell has not run."""
    by = {(setting_of(r), r["seed"], loss_of(r)): r for r in records}
    out, missing = [], []
    for (setting, seed, loss), r in sorted(by.items()):
        if loss != f"{CONTINUE} (switch 0)":
            continue
        try:
            z = audit_top_z(results_dir, r)
        except FileNotFoundError:
            missing.append(f"{setting} seed {seed} (its audit report was not collected)")
            continue
        switch = 0 if z >= AUDIT_CONFIDENCE else 1
        chosen = r if switch == 0 else by.get((setting, seed, f"{CONTINUE} (switch 1)"))
        if chosen is None:
            missing.append(f"{setting} seed {seed} (audit top z {z:.2f}: the switch-1 cell)")
            continue
        if not (comparable(chosen, r) and chosen["config"]["training"].get("audit", False)):
            missing.append(f"{setting} seed {seed} (audit top z {z:.2f}: its switch-1 cell ran with other settings)")
            continue
        out.append({**chosen, "audit_top_z": round(z, 4),
                    "guarded_label": f"{CONTINUE} guarded (top z {z:.1f}: the switch-{switch} cell)"})
    return out, missing


def loss_of(r: dict) -> str:
    """The loss, and where a dece+continue cell switched to CE (0: before training, on the data audit alone;
    "guarded": with ContinueWithCE's guard, which moves an unconfident audit's decision to the end of epoch 1)."""
    if "guarded_label" in r:
        return r["guarded_label"]
    cont = r.get("continue") or {}
    if cont.get("switch_epoch") is None:
        return r["loss"]
    guard = cont.get("guard")
    if guard is None:
        return f"{r['loss']} (switch {cont['switch_epoch']})"
    where = f", decided at epoch {cont['decision_epoch']}" if guard["deferred"] else ""
    return f"{r['loss']} (switch {cont['switch_epoch']}, guarded{where})"


def fmt(value: float | None, scale: float = 1) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def cell_table(records: list[dict]) -> tuple[str, list[dict]]:
    """One row per cell (one seed each here): the metrics, the drop counts and the time against CE."""
    ce = {(setting_of(r), r["seed"]): r for r in records if r["loss"] == "ce"}
    head = ["setting", "seed", "loss", *(h for _, _, h in METRICS), "dropped (poisoned of)", "train min", "x CE"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 3 + " ---: |" * (len(head) - 3)]
    rows = []
    for r in sorted(records, key=lambda r: (setting_of(r), r["seed"], loss_of(r))):
        cont = r.get("continue") or {}
        base = ce.get((setting_of(r), r["seed"]))
        ratio = (r["train_seconds"] / base["train_seconds"] if base is not None and timed(r) and timed(base)
                 and comparable(r, base) else None)
        audit = r["config"]["training"].get("audit", False)  # without the audit, the report is the token signal's
        metrics = {k: r.get(k if audit or not k.startswith("token_") else k.removeprefix("token_"))
                   for k, _, _ in METRICS}
        row = {"setting": setting_of(r), "seed": r["seed"], "loss": loss_of(r), "key": r["key"], "audit": audit,
               **metrics, "continue": cont or None,
               "train_seconds": r["train_seconds"], "resumed": r.get("resumed"), "time_vs_ce": ratio,
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
    by: dict[tuple, dict] = {}
    for r in records:
        key = (setting_of(r), r["seed"], loss_of(r))
        if key in by:
            raise SystemExit(f"two cells of {' / '.join(map(str, key))}: {by[key]['folder']}/{by[key]['key']} and "
                             f"{r['folder']}/{r['key']}; keep one, or name the difference in the loss")
        by[key] = r
    head = ["setting", "seed", "cell", "ASR <= 2%", *(f"{k} within 1 of CE" for k, _ in QUALITY), "time <= 1.15x CE",
            "report AUROC >= 0.95", "report P@k >= 0.8"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows = []
    for (setting, seed, loss), r in sorted(by.items()):
        if not loss.startswith(CONTINUE):
            continue
        ce = by.get((setting, seed, "ce"))
        if ce is not None and not comparable(r, ce):
            ce = None
        row = {"setting": setting, "seed": seed, "loss": loss, "ce": ce["key"] if ce else None,
               "asr": _check(r.get("asr"), lambda v: v <= MAX_ASR, 100)}
        for key, scale in QUALITY:
            drop = None if ce is None or r.get(key) is None or ce.get(key) is None else (ce[key] - r[key]) * scale
            row[key] = None if drop is None else [drop <= MAX_QUALITY_DROP, -drop]
        ratio = r["train_seconds"] / ce["train_seconds"] if ce is not None and timed(r) and timed(ce) else None
        row["time"] = _check(ratio, lambda v: v <= MAX_TIME_RATIO)
        row["report_auroc"] = _check(r.get("report_auroc"), lambda v: v >= MIN_AUROC)
        row["report_precision_at_k"] = _check(r.get("report_precision_at_k"), lambda v: v >= MIN_PRECISION)
        rows.append(row)
        cells = [_verdict(row[k]) for k in ("asr", *(k for k, _ in QUALITY), "time", "report_auroc",
                                            "report_precision_at_k")]
        lines.append(f"| {setting} | {seed} | {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def _check(value: float | None, met, scale: float = 1) -> list | None:
    """[met, value x scale], or None where the value was not measured."""
    return None if value is None else [bool(met(value)), value * scale]


def _verdict(check: list | None) -> str:
    if check is None:
        return "-"
    met, value = check
    return f"{'yes' if met else 'no'} ({value:+.2f})" if isinstance(value, float) and value < 0 else \
        f"{'yes' if met else 'no'} ({value:.2f})"


def replace_doc_table(doc: str, table: str) -> None:
    """Replace the first markdown table after ``DOC_HEADING`` in the file ``doc`` with ``table`` (written
    atomically); a doc without that heading, or without a table under it before the next heading, is an error."""
    with open(doc, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if DOC_HEADING not in lines:
        raise SystemExit(f"--doc {doc}: no line {DOC_HEADING!r} to put the every-cell table under")
    start = lines.index(DOC_HEADING) + 1
    first = next((i for i in range(start, len(lines)) if lines[i].startswith(("|", "#"))), len(lines))
    if first == len(lines) or not lines[first].startswith("|"):
        raise SystemExit(f"--doc {doc}: no table under {DOC_HEADING!r} to replace")
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    lines[first:end] = table.strip("\n").split("\n")
    write_text(doc, "\n".join(lines))


def tables(results_dir: str, output_dir: str | None = None, chart: str | None = None,
           doc: str | None = None) -> str:
    records = load(results_dir)
    cells_md, cells = cell_table(records)
    default, missing = guarded(records, results_dir)
    goals_md, goals = goals_table(records + default)
    text = (f"### Every cell\n\n{cells_md}\n\n### The goals: dece+continue against CE\n\n"
            "Quality columns give dece+continue minus CE, in points (BLEU, CodeBLEU; F1 and exact match in %); time "
            "the ratio of the cells' wall clocks. A \"guarded\" row is the library's default switch before training "
            f"(ContinueWithCE's guard at robust z {AUDIT_CONFIDENCE:g}): the switch-0 cell where the audit's top z "
            "reaches it, else the switch-1 cell, which the guarded run equals.\n\n"
            f"{goals_md}\n")
    if missing:
        text += "\nGuarded rows not yet run: " + "; ".join(missing) + ".\n"
    out = output_dir or results_dir
    write_text(os.path.join(out, "defense.md"), text)
    write_json(os.path.join(out, "defense.json"), {"cells": cells, "goals": goals})
    if chart:
        plot(cells, chart)
    if doc:
        replace_doc_table(doc, cells_md)
    return text


def plot(rows: list[dict], path: str) -> None:
    """Per setting, ASR % and clean BLEU of each cell (one seed each), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(f"{r['setting']} s{r['seed']}" for r in rows))
    losses = sorted({r["loss"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.45 * len(settings) * len(losses) / 2 + 1))
    for ax, (key, scale, label) in zip(axes, (("asr", 100, "ASR % (triggered test)"), ("bleu", 1, "clean BLEU"))):
        height = 0.8 / len(losses)
        for j, loss in enumerate(losses):
            values = [next((r[key] * scale for r in rows if f"{r['setting']} s{r['seed']}" == s and r["loss"] == loss
                            and r.get(key) is not None), float("nan")) for s in settings]
            ax.barh([i + j * height for i in range(len(settings))], values, height=height, label=loss)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(settings))], settings, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("root")
    c.add_argument("out")
    t = sub.add_parser("tables")
    t.add_argument("results_dir")
    t.add_argument("--output_dir", default=None, help="where defense.md and defense.json go (default: RESULTS_DIR)")
    t.add_argument("--chart", default=None, help="also draw ASR and clean BLEU per setting and cell (PNG)")
    t.add_argument("--doc", default=None, help=f"replace the table under this markdown file's {DOC_HEADING!r} "
                                               "with the every-cell table (docs/benchmark.md)")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.root, args.out)
    else:
        print(tables(args.results_dir, args.output_dir, args.chart, args.doc), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
