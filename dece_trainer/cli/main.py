"""The ``dece-trainer`` command (``python -m dece_trainer``): ``train`` and ``audit`` from the library, and the
harness's ``demo``, ``bench`` and ``eval``.

Each sub-command module builds its parser from light imports and loads model code only when it runs, so
``dece-trainer --help`` starts in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..backdoor.commands import bench, demo
from ..backdoor.commands import eval as eval_cmd
from . import audit, train

COMMANDS = (demo, train, audit, bench, eval_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dece-trainer",
        description="Defend code-model fine-tuning against backdoors with Deceptive Cross-Entropy, and measure it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train,audit,bench,eval}")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    if argv and argv[0] == "train":  # every TrainingArguments flag: HfArgumentParser owns the rest of the line
        command, run = "train", lambda: train.main(argv[1:])
    else:
        args = parser.parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return run()
    except ValueError as err:
        parser.exit(2, f"dece-trainer {command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
