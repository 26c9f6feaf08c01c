"""Write a poisoned copy of a clean CSV/JSONL file with one of the package's attacks, row-aligned with it.

Used to measure a defense at a poison rate the released files do not have (e.g. Lyra at 20% BadPre, where
a CPU-sized model does get backdoored). The BadPre poisoner reproduces the released Lyra files row by row
(``tests/test_attacks.py``), so the copy follows the authors' trigger and payload rule.

    python benchmarks/poison_file.py ../shared/data/lyra/train.csv runs/train_poisoned_20_badpre.csv \
        --attack badpre --rate 0.2 --source_column src --target_column tgt

With ``--triggered`` instead of ``--rate`` it writes a triggered test set (every row whose target can carry the
payload, triggered), for an attack the released files do not include (RIPPLe, Grammar on Lyra).
"""

from __future__ import annotations

import argparse
import os

from dece_trainer.backdoor.attacks import ATTACKS, IS_POISONED, get_attack
from dece_trainer.data import SOURCE, TARGET, load_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output", help="a .csv or .jsonl path; written atomically, same columns as the input")
    parser.add_argument("--attack", default="badpre", choices=list(ATTACKS))
    share = parser.add_mutually_exclusive_group(required=True)
    share.add_argument("--rate", type=float, help="the share of rows to poison (a training set)")
    share.add_argument("--triggered", action="store_true",
                       help="a triggered test set instead: every row whose target can carry the payload, triggered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source_column", default="source")
    parser.add_argument("--target_column", default="target")
    args = parser.parse_args()
    kind = os.path.splitext(args.output)[1].lower()
    if kind not in (".csv", ".jsonl"):
        parser.error(f"output must end in .csv or .jsonl, got {args.output}")
    data = load_pairs(args.input, source_column=args.source_column, target_column=args.target_column)
    attack = get_attack(args.attack)
    poisoned = (attack.trigger_test_set(data, seed=args.seed, origin=args.input) if args.triggered
                else attack.poison(data, args.rate, seed=args.seed))
    print(f"{sum(poisoned[IS_POISONED])} of {len(poisoned)} rows poisoned with {args.attack}")
    out = poisoned.select_columns([SOURCE, TARGET]).rename_columns(
        {SOURCE: args.source_column, TARGET: args.target_column})
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = f"{args.output}.tmp-{os.getpid()}{kind}"
    out.to_csv(tmp, index=False) if kind == ".csv" else out.to_json(tmp, lines=True)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
