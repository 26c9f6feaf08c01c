"""How well does each suspicion score rank the poisoned training rows? AUROC and precision at k (k = poisoned rows)
of the report's scores, recomputed from the raw evidence every bench cell keeps (``early_learning/
worst_tokens.npz``: each example's worst tokens per epoch) and its ``suspicious.jsonl``.

Scores compared:
  * ``token``: the report's token score (`recurrence_scores`: improbable bigrams shared with other rows);
  * ``token_unigram``: the same with the token alone as the key (no predecessor);
  * ``token_last``: the token score from the last epoch only;
  * ``worst_nll``: the mean over epochs of the row's worst-token CE (no sharing);
  * ``example``: the report's per-example score (``example_score``: mean worst-token NLL + late drop).

Usage: python benchmarks/report_scores.py BENCH_DIR [BENCH_DIR ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics

import numpy as np

from dece_trainer.callbacks import worst_tokens as wt
from dece_trainer.callbacks.example_history import auroc, precision_at_k
from dece_trainer.io import write_json


def load_tokens(path: str) -> tuple[wt.WorstTokens, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        ce, ids, prev, poisoned = f["ce"], f["ids"], f["prev"], f["poisoned"]
    tokens = wt.WorstTokens(ce.shape[1], ce.shape[2])
    tokens.ce, tokens.ids, tokens.prev = list(ce), list(ids), list(prev)
    return tokens, poisoned


def unigram(tokens: wt.WorstTokens) -> wt.WorstTokens:
    out = wt.WorstTokens(tokens.num_examples, tokens.per_example)
    out.ce, out.ids = tokens.ce, tokens.ids
    out.prev = [np.where(ids >= 0, 0, -1).astype(np.int32) for ids in tokens.ids]
    return out


def last_epoch(tokens: wt.WorstTokens) -> wt.WorstTokens:
    out = wt.WorstTokens(tokens.num_examples, tokens.per_example)
    out.ce, out.ids, out.prev = tokens.ce[-1:], tokens.ids[-1:], tokens.prev[-1:]
    return out


def scores_of(cell_dir: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    tokens, poisoned = load_tokens(os.path.join(cell_dir, "early_learning", "worst_tokens.npz"))
    worst = np.stack([c.astype(np.float64).max(axis=1) for c in tokens.ce])  # -1: not seen that epoch
    worst[worst < 0] = np.nan
    out = {"token": wt.recurrence_scores(tokens).score,
           "token_unigram": wt.recurrence_scores(unigram(tokens)).score,
           "token_last": wt.recurrence_scores(last_epoch(tokens)).score,
           "worst_nll": np.array([np.nan if np.isnan(w).all() else np.nanmean(w) for w in worst.T])}
    report = os.path.join(cell_dir, "early_learning", "suspicious.jsonl")
    if os.path.isfile(report):
        example = np.full(tokens.num_examples, np.nan)
        with open(report, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                example[r["example_id"]] = r.get("example_score", r["score"])
        out["example"] = example
    return out, poisoned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="bench output folders (their cells/*/ are read)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for root in args.dirs:
        for npz in sorted(glob.glob(os.path.join(root, "cells", "*", "early_learning", "worst_tokens.npz"))):
            cell_dir = os.path.dirname(os.path.dirname(npz))
            scores, poisoned = scores_of(cell_dir)
            if not poisoned.any():
                continue
            k = int(poisoned.sum())
            row = {"cell": os.path.basename(cell_dir), "poisoned": k, "rows": int(poisoned.size)}
            for name, s in scores.items():
                row[name] = {"auroc": round(auroc(s, poisoned), 4),
                             "precision_at_k": round(precision_at_k(s, poisoned, k), 4)}
            rows.append(row)
    names = sorted({n for r in rows for n in r if isinstance(r[n], dict)})
    print("| cell | " + " | ".join(f"{n} AUROC | {n} P@k" for n in names) + " |")
    print("|---|" + "---:|" * (2 * len(names)))
    for r in rows:
        print(f"| {r['cell']} | " + " | ".join(f"{r[n]['auroc']:.3f} | {r[n]['precision_at_k']:.3f}"
                                             if n in r else "- | -" for n in names) + " |")
    if rows:
        means = {n: statistics.fmean(r[n]["auroc"] for r in rows if n in r) for n in names}
        print("mean AUROC: " + ", ".join(f"{n} {v:.3f}" for n, v in means.items()))
    if args.json:
        write_json(args.json, {"cells": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
