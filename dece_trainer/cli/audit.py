"""``dece-trainer audit``: score every row of a training file by evidence of a planted trigger -> payload
association (`dece_trainer.audit`), before any training. Writes ``suspicious.jsonl`` (one record per row, most
suspicious first, which `drop_flagged` reads) and ``audit_summary.json`` into ``--output_dir``, and prints the
strongest patterns."""

from __future__ import annotations

import argparse

from ..io import check_writable_folder, inside, write_json, write_jsonl
from ..outliers import FENCE

REPORT, SUMMARY = "suspicious.jsonl", "audit_summary.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("audit", help="score training rows by trigger -> payload evidence (no training)",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_file", required=True,
                   help="training data: CSV, JSON/JSONL, Parquet, a save_to_disk folder or a Hub dataset id")
    p.add_argument("--source_column", default="source", help="the column the model reads")
    p.add_argument("--target_column", default="target", help="the column the model learns to write")
    p.add_argument("--id_column", default=None,
                   help="a column of unique non-negative integer ids for the report; None: the 0-based row")
    p.add_argument("--output_dir", required=True, help="where suspicious.jsonl and audit_summary.json go")
    p.add_argument("--fence", type=float, default=FENCE,
                   help="flag rows whose score's modified z-score exceeds this (> 0; lower flags more)")
    p.add_argument("--min_support", type=int, default=None,
                   help="fewest rows a feature must hold to count; None: max(3, ceil(rows / 1000))")
    p.add_argument("--max_share", type=float, default=0.5, help="most rows a feature may hold, as a share")
    p.add_argument("--top", type=int, default=10,
                   help="most patterns to print: those behind the flagged rows (any row's when none is "
                        "flagged), strongest first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..audit import audit_dataset
    from ..data import load_pairs
    from ..validation import check_int, check_number

    check_number(args.fence, "--fence", low=0.0, low_open=True)
    check_number(args.max_share, "--max_share", low=0.0, high=1.0, low_open=True)
    check_int(args.top, "--top", minimum=0)
    if args.min_support is not None:
        check_int(args.min_support, "--min_support", minimum=1)
    out = check_writable_folder(args.output_dir)
    try:
        data = load_pairs(args.train_file, args.source_column, args.target_column)
    except ValueError as err:
        raise ValueError(f"--train_file: {err}") from err
    report = audit_dataset(data, id_column=args.id_column, min_support=args.min_support,
                           max_share=args.max_share, fence=args.fence)
    write_jsonl(inside(out, REPORT), report.records())
    summary = {"train_file": args.train_file, **report.summary()}
    write_json(inside(out, SUMMARY), summary)
    print(f"audited {summary['rows']} rows: {summary['flagged']} flagged (fence {args.fence}); "
          f"report {inside(out, REPORT)}")
    for p in report.top_patterns(args.top):
        print(f"  {p.score:10.1f}  {p.rows:6d} rows  {p.source}  ->  {p.target}  "
              f"(together {p.support}, source {p.source_rows}, target {p.target_rows})")
    return 0
