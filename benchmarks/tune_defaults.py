"""The report's defaults, tuned on the development split only and reported on every other report: the flagging
fence (`dece_trainer.outliers.FENCE`) and the weight of the data audit against the training signal in the combined
score (`dece_trainer.outliers.combine_scores` weighs them equally).

The development split is named before tuning (issue 20): seed 0 of ``fixed_deadcode`` (embedded method_name, 5%)
and of Lyra BadPre (20%, 240 rows). Its reports are the GPU grid's DeCE reports of those cells
(`benchmarks/results/gpu_h200_grid/report_scores.json`, every alpha), each joined with the data audit of the same
training rows (`combined_report.training_rows`, checked against the report's ground truth). Every other report of
the grid is held out.

For each (fence, audit weight w): the score ``(1 - w) * max(0, z_token) + w * max(0, z_audit)`` (w = 0.5 is
`combine_scores` up to a factor the threshold does not see), flagged by `choose_threshold` at the fence; w = 0 and
w = 1 are each signal's own raw score (the token report alone, the audit alone, as the library flags them), not the
clipped z-score, whose many zeros would change the rule's spread. The Lyra reports of every seed rank the same 240
training rows (`--max_train` picks them whatever the seed), so the held-out Lyra BadPre reports share the dev
report's audit: only their token scores are new. The choice
minimises the poisoned rows kept on the development split, then the clean rows flagged (a clean row dropped costs
the clean task one row; a poisoned row kept is the backdoor).

    python benchmarks/tune_defaults.py --output_dir benchmarks/results/tune_defaults [--chart PNG]

Writes results.json (every grid point on both splits, the choice, the default's numbers) and table.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
from combined_report import SCORES, joined_reports

FENCES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT = (2.5, 0.5)  # the fence and weight in the library before tuning


def is_dev(key: str) -> bool:
    """The development split: seed 0 of fixed_deadcode and of Lyra BadPre."""
    return key.endswith("-s0") and ("-fixed_deadcode-" in key or key.startswith("train_poisoned_20_badpre-"))


def reports(scores_path: str) -> list[dict]:
    """Every grid report whose training rows can be rebuilt here: key, dev or not, the two signals' raw scores
    and clipped z-scores, and the ground truth."""
    from dece_trainer.outliers import robust_z

    return [{"key": key, "dev": is_dev(key), "truth": truth, "token": token, "audit": audit,
             "z_token": np.maximum(robust_z(token), 0.0), "z_audit": np.maximum(robust_z(audit), 0.0)}
            for key, token, audit, truth in joined_reports(scores_path, [])]


def evaluate(items: list[dict], fence: float, weight: float) -> dict:
    """Totals over ``items`` at one grid point: poisoned rows kept, clean rows flagged, reports that keep any
    poisoned row, and the worst AUROC and precision at k."""
    from dece_trainer.callbacks.example_history import auroc, precision_at_k
    from dece_trainer.outliers import choose_threshold

    kept = clean = poisoned = rows = leaky = 0
    aurocs, precisions = [], []
    for item in items:
        score = (item["token"] if weight == 0 else item["audit"] if weight == 1
                 else (1 - weight) * item["z_token"] + weight * item["z_audit"])
        flagged = score > choose_threshold(score, fence)
        truth = item["truth"]
        kept_here = int((~flagged & truth).sum())
        kept, leaky = kept + kept_here, leaky + (kept_here > 0)
        clean += int((flagged & ~truth).sum())
        poisoned, rows = poisoned + int(truth.sum()), rows + truth.size
        aurocs.append(auroc(score, truth))
        precisions.append(precision_at_k(score, truth, int(truth.sum())))
    return {"fence": fence, "audit_weight": weight, "reports": len(items), "poisoned_kept": kept,
            "poisoned": poisoned, "clean_flagged": clean, "clean": rows - poisoned, "reports_keeping_poison": leaky,
            "min_auroc": round(min(aurocs), 4), "min_precision_at_k": round(min(precisions), 4)}


def table(points: list[dict], chosen: tuple[float, float]) -> str:
    lines = ["| split | fence | audit weight | poisoned kept | clean flagged | reports keeping poison | "
             "min AUROC | min P@k |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in points:
        mark = " (chosen)" if (p["fence"], p["audit_weight"]) == chosen else (
            " (default before)" if (p["fence"], p["audit_weight"]) == DEFAULT else "")
        share = 100 * p["clean_flagged"] / p["clean"]
        lines.append(f"| {p['split']} | {p['fence']:g}{mark} | {p['audit_weight']:g} | {p['poisoned_kept']}/"
                     f"{p['poisoned']} | {p['clean_flagged']}/{p['clean']} ({share:.1f}%)"
                     f" | {p['reports_keeping_poison']}/{p['reports']} | {p['min_auroc']:.3f} | "
                     f"{p['min_precision_at_k']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(points: list[dict], chosen: tuple[float, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for ax, split in zip(axes, ("dev", "held-out")):
        for weight in WEIGHTS:
            rows = [p for p in points if p["split"] == split and p["audit_weight"] == weight]
            ax.plot([100 * p["clean_flagged"] / p["clean"] for p in rows],
                    [100 * p["poisoned_kept"] / p["poisoned"] for p in rows], marker="o",
                    label=f"audit weight {weight:g}")
        pick = next(p for p in points if p["split"] == split and (p["fence"], p["audit_weight"]) == chosen)
        ax.scatter([100 * pick["clean_flagged"] / pick["clean"]], [100 * pick["poisoned_kept"] / pick["poisoned"]],
                   s=160, facecolors="none", edgecolors="k", label=f"chosen: fence {chosen[0]:g}, weight {chosen[1]:g}")
        ax.set(xlabel="clean rows flagged %", ylabel="poisoned rows kept %", title=f"{split} reports")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--scores", default=str(SCORES), help="report_scores.json of a bench grid")
    p.add_argument("--chart", default=None, help="also draw poisoned kept against clean flagged, per split")
    args = p.parse_args(argv)
    from dece_trainer.io import write_json, write_text

    items = reports(args.scores)
    splits = {"dev": [i for i in items if i["dev"]], "held-out": [i for i in items if not i["dev"]]}
    if not splits["dev"]:
        raise SystemExit("no development-split report could be rebuilt here (Lyra's rows need ../shared/data/lyra)")
    points = [{"split": split, **evaluate(rows, fence, weight)}
              for split, rows in splits.items() for weight in WEIGHTS for fence in FENCES]
    dev = [q for q in points if q["split"] == "dev"]
    best = min(dev, key=lambda q: (q["poisoned_kept"], q["clean_flagged"]))
    chosen = (best["fence"], best["audit_weight"])
    out = Path(args.output_dir)
    write_json(out / "results.json", {
        "command": "python benchmarks/tune_defaults.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(), "numpy": np.__version__,
        "dev_reports": [i["key"] for i in splits["dev"]], "held_out_reports": [i["key"] for i in splits["held-out"]],
        "rule": "minimise poisoned rows kept on the dev reports, then clean rows flagged",
        "chosen": {"fence": chosen[0], "audit_weight": chosen[1]},
        "default_before": {"fence": DEFAULT[0], "audit_weight": DEFAULT[1]}, "points": points})
    text = table(points, chosen)
    write_text(out / "table.md", text)
    if args.chart:
        plot(points, chosen, args.chart)
    print(f"chosen on {len(splits['dev'])} dev reports: fence {chosen[0]:g}, audit weight {chosen[1]:g}")
    print(text)


if __name__ == "__main__":
    main()
