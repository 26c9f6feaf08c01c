"""One report from every signal, measured with no training: the token scores of the GPU grid's DeCE reports
(`benchmarks/results/gpu_h200_grid/report_scores.json`: each report's ``score`` by example id, rounded to 3
decimals, and the ground truth) against the data audit of the same training rows (`dece_trainer.audit.audit_pairs`,
rebuilt as the bench cells built them and checked row by row against the report's poisoned rows), and the rules
that combine them into one score.

Rules (each signal standardised by its own `dece_trainer.outliers.robust_z`):
  * ``combined``: `dece_trainer.outliers.combine_scores`, what ``EarlyLearningCallback(audit=...)`` ranks by: the sum
    of the signals' positive z-scores;
  * ``max_z``: the larger of the two z-scores;
  * ``sum_z``: the sum of the two z-scores (negative ones included).

For each: AUROC and precision at k (k = poisoned rows) of the ranking, and what the filter's own threshold
(`outliers.choose_threshold` at the default fence, 2.5) leaves and drops: poisoned rows kept, clean rows flagged.

    python benchmarks/combined_report.py --output_dir benchmarks/results/combined_report

Writes results.json (one record per report and score) and table.md; feeds docs/early_learning.md ("Combining the
data audit"). The Lyra cells need ../shared/data/lyra (skipped without it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

SCORES = Path(__file__).resolve().parent / "results" / "gpu_h200_grid" / "report_scores.json"
LYRA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lyra"
RULES = ("token", "audit", "combined", "max_z", "sum_z")


def training_rows(key: str, lyra_cache: dict):
    """(sources, targets, is_poisoned) of the training rows the report ``key`` ranks, in example-id order; None
    when they cannot be rebuilt here."""
    parts = key.split("-")
    seed = int(parts[-1][1:])
    if key.startswith("method_name-"):  # the embedded task: its poisoning seed is the cell's
        from dece_trainer.backdoor.tasks import embedded

        bench = embedded("method_name", parts[1], float(parts[2][1:]), seed=seed, max_per_split=300)
        return bench.train["source"], bench.train["target"], bench.train["is_poisoned"]
    if key.startswith("train_poisoned_20_") and LYRA.is_dir():  # poison_file.py at 20%, seed 0; --max_train 240
        from dece_trainer.backdoor.attacks import get_attack
        from dece_trainer.backdoor.tasks import subset_rows
        from dece_trainer.data import load_pairs

        attack = parts[1]
        if attack not in lyra_cache:
            lyra_cache[attack] = get_attack(attack).poison(load_pairs(str(LYRA / "train.csv"), "src", "tgt"), 0.2,
                                                           seed=0)
        data = lyra_cache[attack]
        rows, _ = subset_rows(data["is_poisoned"], 240)  # from_files: the default subset seed, whatever the cell's
        return ([data["source"][i] for i in rows], [data["target"][i] for i in rows],
                [data["is_poisoned"][i] for i in rows])
    return None


def joined_reports(scores_path: str, skipped: list[str]):
    """Each report of ``scores_path`` (a grid's ``report_scores.json``) whose training rows can be rebuilt here, as
    (key, token scores, audit scores, ground truth), (N,) arrays in example-id order; the keys of the others are
    appended to ``skipped``. The rebuilt rows' poisoned rows must be the report's."""
    from dece_trainer.audit import audit_pairs

    with open(scores_path, encoding="utf-8") as f:
        reports = json.load(f)
    audits, lyra_cache = {}, {}
    for key, report in reports.items():
        truth = np.asarray(report["poisoned"], dtype=bool)
        data_key = tuple(key.split("-")[:3]) + (key.split("-")[-1] if key.startswith("method_name-") else "",)
        if data_key not in audits:
            rows = training_rows(key, lyra_cache)
            audits[data_key] = None if rows is None else (audit_pairs(rows[0], rows[1]).scores,
                                                          np.asarray(rows[2], dtype=bool))
        if audits[data_key] is None:
            skipped.append(key)
            continue
        audit, rebuilt = audits[data_key]
        if not np.array_equal(rebuilt, truth):
            raise SystemExit(f"{key}: the rebuilt training rows' poisoned rows are not the report's")
        yield key, np.asarray(report["score"], float), audit, truth


def rules(token: np.ndarray, audit: np.ndarray) -> dict[str, np.ndarray]:
    from dece_trainer.outliers import combine_scores, robust_z

    zt, za = robust_z(token), robust_z(audit)
    return {"token": token, "audit": audit, "combined": combine_scores([token, audit]),
            "max_z": np.maximum(zt, za), "sum_z": zt + za}


def measure(key: str, setting: str, scores: dict[str, np.ndarray], truth: np.ndarray) -> list[dict]:
    from dece_trainer.callbacks.example_history import auroc, precision_at_k
    from dece_trainer.outliers import choose_threshold

    k = int(truth.sum())
    out = []
    for name, score in scores.items():
        flagged = score > choose_threshold(score)
        out.append({"report": key, "setting": setting, "score": name, "rows": int(truth.size), "poisoned": k,
                    "auroc": round(auroc(score, truth), 4), "precision_at_k": round(precision_at_k(score, truth, k), 4),
                    "kept_poisoned": int((~flagged & truth).sum()), "flagged_clean": int((flagged & ~truth).sum())})
    return out


def setting_of(key: str) -> str:
    parts = key.split("-")
    if key.startswith("method_name-"):
        return f"method_name {parts[1]} {float(parts[2][1:]):.0%}"
    return f"lyra {parts[1]} 20% (240 rows)"


def table(records: list[dict]) -> str:
    lines = ["| setting | reports | score | AUROC mean (min) | P@k mean (min) | poisoned kept | clean flagged |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    settings = list(dict.fromkeys(r["setting"] for r in records)) + ["all"]
    for setting in settings:
        for name in RULES:
            rows = [r for r in records if r["score"] == name and setting in ("all", r["setting"])]
            auc, pak = [r["auroc"] for r in rows], [r["precision_at_k"] for r in rows]
            kept, poisoned = sum(r["kept_poisoned"] for r in rows), sum(r["poisoned"] for r in rows)
            clean, total = sum(r["flagged_clean"] for r in rows), sum(r["rows"] - r["poisoned"] for r in rows)
            lines.append(f"| {setting} | {len(rows)} | {name} | {np.mean(auc):.3f} ({min(auc):.3f}) | "
                         f"{np.mean(pak):.3f} ({min(pak):.3f}) | {kept}/{poisoned} | {clean}/{total} "
                         f"({100 * clean / total:.1f}%) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--scores", default=str(SCORES), help="report_scores.json of a bench grid")
    args = p.parse_args(argv)
    from dece_trainer.io import write_json, write_text

    records, skipped = [], []
    for key, token, audit, truth in joined_reports(args.scores, skipped):
        records.extend(measure(key, setting_of(key), rules(token, audit), truth))
        print(key, {r["score"]: r["auroc"] for r in records[-len(RULES):]}, flush=True)
    if skipped:
        print(f"skipped {len(skipped)} reports whose training rows are not here: {skipped}", file=sys.stderr)
    out = Path(args.output_dir)
    write_json(out / "results.json", {
        "command": "python benchmarks/combined_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scores": os.path.relpath(args.scores, Path(__file__).resolve().parent.parent),
        "python": platform.python_version(), "numpy": np.__version__, "skipped": skipped, "records": records})
    write_text(out / "table.md", table(records))
    print(table(records))


if __name__ == "__main__":
    main()
