"""How well the data audit names the poisoned rows, with no training: `dece_trainer.audit.audit_pairs` on the
training sets of every benchmark setting, every seed: AUROC and precision at k (k = poisoned rows) of its
scores, what its own threshold flags (poisoned rows caught, clean rows dropped), and what ContinueWithCE's guard
reads: the top robust z-score, and whether it reaches `outliers.AUDIT_CONFIDENCE` (a switch before training then
decides on the audit; below it the run decides at the end of epoch 1).

Settings (the training rows the bench cells see):
- the embedded method_name task (300 training rows, `benchmarks/settings.sh`: EMBEDDED), poisoned by
  fixed_deadcode and grammar_deadcode at 5%, the adaptive family at 10% (adaptive also at 5%); seeds 0-9;
- Lyra as released (BadPre 1/2/5%, 1600 rows) and BadPre at 20% (`benchmarks/poison_file.py`, seed 0), whole and as
  the budgeted cells' 240-row subsets (`--max_train 240`, seeds 0-2). Skipped when ../shared is absent.

    python benchmarks/audit_quality.py --output_dir benchmarks/results/audit_quality

Writes results.json (one record per setting and seed) and table.md (means and worst seeds); feeds
docs/benchmark.md ("The data audit").
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

import numpy as np

EMBEDDED = [("fixed_deadcode", 0.05), ("grammar_deadcode", 0.05), ("adaptive", 0.1), ("adaptive", 0.05),
            ("adaptive_triggers", 0.1), ("adaptive_payloads", 0.1), ("adaptive_spread", 0.1)]
LYRA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lyra"
PAYLOAD = re.compile(r"1=1|0=1")


def quality(name: str, seed: int, sources: list[str], targets: list[str], poisoned: list[bool]) -> dict:
    from dece_trainer.audit import audit_pairs
    from dece_trainer.callbacks.example_history import auroc, precision_at_k
    from dece_trainer.outliers import AUDIT_CONFIDENCE, top_z

    truth = np.asarray(poisoned, dtype=bool)
    report = audit_pairs(sources, targets)
    z = top_z(report.scores)
    flagged = report.flagged
    top = report.top_patterns(1)
    return {"setting": name, "seed": seed, "rows": int(truth.size), "poisoned": int(truth.sum()),
            "auroc": round(auroc(report.scores, truth), 4),
            "precision_at_k": round(precision_at_k(report.scores, truth, int(truth.sum())), 4),
            "flagged": int(flagged.sum()), "flagged_poisoned": int((flagged & truth).sum()),
            "flagged_clean": int((flagged & ~truth).sum()),
            "top_z": round(z, 4), "audit_decides": z >= AUDIT_CONFIDENCE,
            "top_pattern": top[0].to_dict() if top else None}


def embedded_rows(attack: str, rate: float, seed: int):
    from dece_trainer.backdoor.tasks import embedded

    bench = embedded("method_name", attack, rate, seed=seed, max_per_split=300)
    return bench.train["source"], bench.train["target"], bench.train["is_poisoned"]


def lyra_settings(seeds: list[int]):
    """(name, seed, sources, targets, poisoned) of each Lyra training set audited."""
    from dece_trainer.backdoor.attacks import get_attack
    from dece_trainer.backdoor.tasks import subset_rows
    from dece_trainer.data import load_pairs

    for rate in (1, 2, 5):
        data = load_pairs(str(LYRA / f"train_poisoned_{rate}_badpre.csv"), "src", "tgt")
        yield f"lyra badpre {rate}% (released, 1600 rows)", 0, data["source"], data["target"], [
            bool(PAYLOAD.search(t)) for t in data["target"]]
    p20 = get_attack("badpre").poison(load_pairs(str(LYRA / "train.csv"), "src", "tgt"), 0.2, seed=0)
    truth = p20["is_poisoned"]
    yield "lyra badpre 20% (1600 rows)", 0, p20["source"], p20["target"], truth
    for seed in seeds:  # the budgeted cells' training rows (from_files: subset_rows with the cell's default seed 0)
        rows, _ = subset_rows(truth, 240, seed=seed)
        yield ("lyra badpre 20% (budgeted, 240 rows)", seed, [p20["source"][i] for i in rows],
               [p20["target"][i] for i in rows], [truth[i] for i in rows])


def table(records: list[dict]) -> str:
    lines = ["| setting | seeds | AUROC mean (min) | P@k mean (min) | poisoned caught | clean flagged "
             "| top z min-max | guard: audit decides (poisoned kept) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["setting"] for r in records):
        rows = [r for r in records if r["setting"] == name]
        auc, pak = [r["auroc"] for r in rows], [r["precision_at_k"] for r in rows]
        caught = sum(r["flagged_poisoned"] for r in rows) / max(1, sum(r["poisoned"] for r in rows))
        clean = sum(r["flagged_clean"] for r in rows) / max(1, sum(r["rows"] - r["poisoned"] for r in rows))
        z = [r["top_z"] for r in rows]
        decides = [r for r in rows if r["audit_decides"]]
        kept = sum(r["poisoned"] - r["flagged_poisoned"] for r in decides)
        lines.append(f"| {name} | {len(rows)} | {np.mean(auc):.3f} ({min(auc):.3f}) | {np.mean(pak):.3f} "
                     f"({min(pak):.3f}) | {100 * caught:.1f}% | {100 * clean:.1f}% | {min(z):.1f}-{max(z):.1f} "
                     f"| {len(decides)} of {len(rows)} ({kept}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seeds", type=int, default=10, help="embedded-task seeds 0..N-1")
    p.add_argument("--lyra_seeds", type=int, default=3, help="budgeted Lyra subsets' seeds 0..N-1")
    args = p.parse_args(argv)
    from dece_trainer.io import write_json, write_text

    records = []
    for attack, rate in EMBEDDED:
        for seed in range(args.seeds):
            records.append(quality(f"method_name {attack} {rate:.0%}", seed, *embedded_rows(attack, rate, seed)))
            print(records[-1]["setting"], seed, records[-1]["auroc"], records[-1]["precision_at_k"], flush=True)
    if LYRA.is_dir():
        for name, seed, sources, targets, truth in lyra_settings(list(range(args.lyra_seeds))):
            records.append(quality(name, seed, sources, targets, truth))
            print(name, seed, records[-1]["auroc"], records[-1]["precision_at_k"], flush=True)
    else:
        print(f"skipping Lyra: {LYRA} not found", file=sys.stderr)
    out = Path(args.output_dir)
    write_json(out / "results.json", {
        "command": "python benchmarks/audit_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
        "records": records})
    write_text(out / "table.md", table(records))
    print(table(records))


if __name__ == "__main__":
    main()
