"""The ``dece-trainer`` command: ``demo``, ``train``, ``bench`` and ``eval``."""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, demo, train
from . import eval as eval_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dece-trainer",
        description="Defend code-model fine-tuning against backdoors with Deceptive Cross-Entropy, and measure it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,bench,eval}")
    for module in (demo, train, bench, eval_cmd):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    if argv and argv[0] == "train":  # every TrainingArguments flag: HfArgumentParser owns the rest of the line
        return train.run(argparse.Namespace(help=False), argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"dece-trainer {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
