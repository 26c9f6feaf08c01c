"""``dece-trainer bench``: the experiment grid, resumable, with the paper-layout table and the alpha chart."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import sys
import time
from typing import TYPE_CHECKING

from ...outliers import AUDIT_CONFIDENCE
from ...validation import check_number
from ..attacks import ATTACKS
from ..checks import (
    check_model,
    check_name,
    check_positive_ints,
    check_regex,
    check_training_numbers,
    dataset_name,
    optional_float,
)
from ..data import EMBEDDED_TASKS
from ..grid import ALPHA_LOSSES, CONTINUE, FILTER, FILTER_FIRST_STAGE, LOSS_HELP, LOSSES, ONION, Cell

if TYPE_CHECKING:
    from ..experiment import TrainConfig
    from ..report import ResultStore
    from ..tasks import Benchmark

# Model code (torch, transformers, datasets) is imported inside the functions that run a grid, so building
# this command's parser (``dece-trainer --help``) stays cheap.

DEFAULT_PAYLOAD_REGEX = "1=1|0=1"
DEFAULT_ALPHA_BASES = (0.985, 0.9, 0.8, 0.5)
FILE_FLAGS = ("validation_file", "test_file", "triggered_test_file", "triggered_validation_file", "warmup_file")


def csv_list(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {text!r}") from err
    return parse


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data: the embedded task, or already-poisoned files as released")
    g.add_argument("--dataset", default="method_name",
                   help=f"embedded task: {', '.join(EMBEDDED_TASKS)} (ignored with --train_file)")
    g.add_argument("--max_per_split", type=int, default=None, help="cap rows per split of the embedded task")
    g.add_argument("--max_train", type=int, default=None,
                   help="with --train_file: a seeded subset of N rows holding the file's poison share")
    g.add_argument("--train_file", help="CSV/JSONL training set, already poisoned")
    g.add_argument("--validation_file", help="clean CSV/JSONL validation set (probes; alpha is tuned on it)")
    g.add_argument("--test_file", help="clean CSV/JSONL test set")
    g.add_argument("--triggered_test_file", help="triggered CSV/JSONL test set (targets carry the payload)")
    g.add_argument("--triggered_validation_file",
                   help="triggered CSV/JSONL validation set made with the training file's own trigger: the "
                        "per-epoch triggered probe. Without it (and with --validation_file), the probe is "
                        "--probe_size payload rows of --triggered_test_file held out of the test metrics")
    g.add_argument("--warmup_file", help="clean CSV/JSONL set to warm-start the model on (CE, --warmup_epochs)")
    g.add_argument("--warmup_rows", type=int, default=None,
                   help="with --max_train and a --warmup_file row-aligned with --train_file (Lyra's train.csv): "
                        "warm up on N of its rows outside the training subset")
    g.add_argument("--source_column", default="source", help="with --train_file: the files' input column")
    g.add_argument("--target_column", default="target", help="with --train_file: the files' output column")
    g.add_argument("--payload_regex", default=None,
                   help=f"with --train_file: regex that detects the payload in an output and marks the poisoned "
                        f"training rows (default {DEFAULT_PAYLOAD_REGEX}); the embedded task's attacks detect "
                        "their own payload")
    g.add_argument("--codebleu_lang", default="python", choices=["python", "java", "none"],
                   help="language of CodeBLEU on the clean test outputs (none: skip it)")


def add_train_arguments(parser: argparse.ArgumentParser, epochs: float = 3.0) -> None:
    g = parser.add_argument_group("model and training")
    g.add_argument("--model", default="small",
                   help="tiny, small or base (from scratch, warm-started), smollm2 (offline SmolLM2-135M), "
                        "or a Hub id / local folder of a causal LM")
    g.add_argument("--warmup_epochs", type=float, default=4.0, help="CE epochs on the clean warm-up split "
                   "(embedded task or --warmup_file; once per seed, cached; 0: no warm-up)")
    g.add_argument("--epochs", type=float, default=epochs, help="fine-tuning epochs of every cell (> 0)")
    g.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate of the fine-tune and "
                   "the warm-up (linear decay, 5%% warm-up steps)")
    g.add_argument("--batch_size", type=int, default=16, help="training examples per step (per device)")
    g.add_argument("--grad_accum", type=int, default=1, help="gradient accumulation steps per optimizer step")
    g.add_argument("--max_source_tokens", type=int, default=256, help="truncate inputs to this many tokens")
    g.add_argument("--max_target_tokens", type=int, default=128, help="truncate targets to this many tokens")
    g.add_argument("--max_new_tokens", type=int, default=64, help="generation length limit (probes and test)")
    g.add_argument("--max_test", type=int, default=None, help="evaluate on the first N test rows only")
    g.add_argument("--probe_size", type=int, default=64, help="validation rows generated per probe per epoch")
    g.add_argument("--label_smoothing", type=float, default=0.05, help="DeCE's label smoothing, in [0, 1)")
    g.add_argument("--alpha_schedule", default="epoch", choices=["epoch", "continuous"],
                   help="DeCE's alpha = alpha_base ** epoch, per whole epoch or continuous")
    g.add_argument("--lora_r", type=int, default=0, help="LoRA rank for pretrained models (0: full fine-tune)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False, help="bf16 mixed precision")
    g.add_argument("--audit", action=argparse.BooleanOptionalAction, default=True,
                   help="the suspicious-example report (which dece+filter and dece+continue act on) combines the data "
                        "audit of the training texts with the training signal; --no-audit: the training signal alone")
    g.add_argument("--switch_epoch", type=int, default=None,
                   help="dece+continue: the epoch at whose end the cell switches to CE without the flagged rows (0: "
                        "before training, on the data audit alone, guarded by --audit_confidence; needs --audit). "
                        "Default: ContinueWithCE's, 0 with --audit and 1 without (1 for the other losses' cells)")
    g.add_argument("--audit_confidence", type=optional_float, default=AUDIT_CONFIDENCE, metavar="Z|none",
                   help="dece+continue with --switch_epoch 0: the robust z-score the audit's most suspicious row must "
                        "reach for the audit to decide before training; below it the cell decides at the end of "
                        "epoch 1 on the combined report (ContinueWithCE's guard; none: trust the audit). Unused, and "
                        "recorded as none, with any other --switch_epoch")


def train_config(args: argparse.Namespace) -> TrainConfig:
    from ..experiment import TrainConfig

    return TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                       grad_accum=args.grad_accum, max_source_tokens=args.max_source_tokens,
                       max_target_tokens=args.max_target_tokens, max_new_tokens=args.max_new_tokens,
                       probe_size=args.probe_size, label_smoothing=args.label_smoothing,
                       alpha_schedule=args.alpha_schedule, bf16=args.bf16,
                       codebleu_lang=None if args.codebleu_lang == "none" else args.codebleu_lang,
                       max_test=args.max_test, audit=args.audit, switch_epoch=args.switch_epoch,
                       audit_confidence=args.audit_confidence)


def load_benchmark(args: argparse.Namespace, attack: str, rate: float, seed: int) -> Benchmark:
    from ..tasks import embedded, from_files

    if args.train_file:
        missing = [f for f in ("test_file", "triggered_test_file") if not getattr(args, f)]
        if missing:
            raise ValueError(f"with --train_file also give {', '.join('--' + m for m in missing)}")
        return from_files(args.train_file, args.test_file, args.triggered_test_file,
                          args.payload_regex or DEFAULT_PAYLOAD_REGEX,
                          validation_file=args.validation_file, source_column=args.source_column,
                          target_column=args.target_column, attack_name=attack,
                          name=dataset_name(args.train_file), warmup_file=args.warmup_file,
                          probe_size=args.probe_size, max_train=args.max_train,
                          warmup_rows=args.warmup_rows, triggered_validation_file=args.triggered_validation_file)
    return embedded(args.dataset, attack, rate, seed=seed, max_per_split=args.max_per_split,
                    probe_size=args.probe_size)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run the experiment grid (resumable) and print the paper's table",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def parser() -> argparse.ArgumentParser:
    """A stand-alone parser of the bench flags (``demo`` builds its grid through it)."""
    p = argparse.ArgumentParser(prog="dece-trainer bench", description=__doc__)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    g = p.add_argument_group("grid")
    g.add_argument("--attacks", type=csv_list(str), default=["fixed_deadcode"],
                   help=f"attacks ({', '.join(ATTACKS)}); with --train_file, a label for the files' attack (its "
                        "trigger is checked against the poisoned training rows; the files are never re-triggered)")
    g.add_argument("--poison_rates", type=csv_list(float), default=[0.05], help="ignored with --train_file")
    g.add_argument("--losses", type=csv_list(str), default=["ce", "dece"],
                   help="; ".join(f"{k}: {v}" for k, v in LOSS_HELP.items()).replace("%", "%%"))
    g.add_argument("--alpha_bases", type=csv_list(float), default=None,
                   help=f"DeCE cells sweep these (default {','.join(map(str, DEFAULT_ALPHA_BASES))} unless "
                        "--alpha_finals is given)")
    g.add_argument("--alpha_finals", type=csv_list(float), default=[],
                   help="DeCE cells given the alpha wanted on the last epoch (alpha_base derived from --epochs and "
                        "--alpha_schedule), e.g. 0.8,0.5; alone, these are the only DeCE cells")
    g.add_argument("--seeds", type=csv_list(int), default=[0], help="one cell per seed (model init, data order)")
    add_train_arguments(p)
    p.add_argument("--output_dir", default="bench_out", help="results, tables, charts, cells and caches go here")


def alpha_bases(args: argparse.Namespace) -> list[float]:
    """--alpha_bases as given; unset, the default sweep, or none when --alpha_finals names the DeCE cells."""
    if args.alpha_bases is not None:
        return args.alpha_bases
    return [] if args.alpha_finals else list(DEFAULT_ALPHA_BASES)


def validate(args: argparse.Namespace) -> None:
    """Every check that needs no data or model: run first, so a bad flag fails at once."""
    if not args.attacks:
        raise ValueError("--attacks is empty")
    for attack in args.attacks:
        check_name(attack, "--attacks name")
    bad = [a for a in args.attacks if a not in ATTACKS]
    if bad and not args.train_file:
        raise ValueError(f"unknown attack(s) {bad}; valid attacks: {', '.join(ATTACKS)}")
    bad = [loss for loss in args.losses if loss not in LOSSES]
    if bad:
        raise ValueError(f"unknown loss(es) {bad}; valid losses: {', '.join(LOSSES)}")
    if not args.losses:
        raise ValueError("--losses is empty")
    for rate in args.poison_rates:
        if not 0 < rate <= 1:
            raise ValueError(f"poison rate must be in (0, 1], got {rate}")
    for name, alphas in (("alpha_bases", alpha_bases(args)), ("alpha_finals", args.alpha_finals)):
        for alpha in alphas:
            if not 0 < alpha <= 1:
                raise ValueError(f"--{name} values must be in (0, 1], got {alpha}")
    if set(ALPHA_LOSSES) & set(args.losses) and not alpha_bases(args) and not args.alpha_finals:
        raise ValueError("--losses has dece but --alpha_bases and --alpha_finals are both empty")
    if not args.seeds or any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds must be one or more integers >= 0, got {args.seeds}")
    if args.switch_epoch is None:  # ContinueWithCE's default: guarded before training where there is an audit
        args.switch_epoch = 0 if args.audit and CONTINUE in args.losses else 1
    check_positive_ints(args, ("switch_epoch",), minimum=0)
    if args.audit_confidence is not None:
        check_number(args.audit_confidence, "--audit_confidence", low=0.0)
    if args.switch_epoch != 0:
        args.audit_confidence = None  # the guard of a switch before training: unused, so not a setting of the cell
    if args.switch_epoch == 0 and not args.audit and CONTINUE in args.losses:
        raise ValueError("--switch_epoch 0 decides on the data audit alone before training, and --no-audit turns the "
                         "audit off: drop --no-audit")
    if CONTINUE in args.losses and args.switch_epoch == 0 and args.audit_confidence is not None \
            and not args.epochs > 1:
        raise ValueError(f"--losses {CONTINUE} with --switch_epoch 0 is guarded (--audit_confidence "
                         f"{args.audit_confidence:g}): where the audit is not confident the cell switches at the end "
                         f"of epoch 1, so it needs --epochs above 1, got {args.epochs:g} (or --audit_confidence none)")
    if CONTINUE in args.losses and not args.epochs > args.switch_epoch:
        raise ValueError(f"--losses {CONTINUE} switches to CE at the end of epoch {args.switch_epoch}, so it needs "
                         f"--epochs above {args.switch_epoch}, "
                         f"got {args.epochs:g}")
    check_training_numbers(args)
    check_positive_ints(args, ("max_per_split", "max_train", "warmup_rows"), optional=True)
    if args.train_file:
        missing = [f for f in ("test_file", "triggered_test_file") if not getattr(args, f)]
        if missing:
            raise ValueError(f"with --train_file also give {', '.join('--' + m for m in missing)}")
        if FILTER in args.losses and not args.validation_file:
            raise ValueError(f"--losses {FILTER} drops the rows the early-learning report flags, and the report "
                             "comes with the validation probes: give --validation_file")
        if ONION in args.losses and not args.validation_file:
            raise ValueError(f"--losses {ONION} picks its threshold on clean validation sources: give "
                             "--validation_file")
        for flag in ("train_file", *FILE_FLAGS):
            path = getattr(args, flag)
            if path and not os.path.isfile(path):
                raise ValueError(f"--{flag}: data file not found: {path}")
        if args.payload_regex is None:
            args.payload_regex = DEFAULT_PAYLOAD_REGEX
        check_regex(args.payload_regex)
    else:
        if args.dataset not in EMBEDDED_TASKS:
            raise ValueError(f"unknown dataset {args.dataset!r}; valid datasets: {', '.join(EMBEDDED_TASKS)} "
                             "(or give --train_file ...)")
        given = [f"--{flag}" for flag in ("payload_regex", *FILE_FLAGS, "max_train", "warmup_rows")
                 if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --train_file; the embedded task "
                             f"{args.dataset!r} builds its own splits and detects its attacks' own payloads")
    check_model(args.model)


def cells_of(args: argparse.Namespace, dataset: str, file_rate: float | None = None) -> list[Cell]:
    from ...ops.schedule import alpha_base_for_final

    rates = [file_rate] if args.train_file else args.poison_rates
    cells = []
    for attack, rate, seed, loss in itertools.product(args.attacks, rates, args.seeds, args.losses):
        if loss not in ALPHA_LOSSES:
            cells.append(Cell(dataset, attack, rate, loss, seed))
            continue
        cells += [Cell(dataset, attack, rate, loss, seed, a) for a in alpha_bases(args)]
        cells += [Cell(dataset, attack, rate, loss, seed, alpha_base_for_final(f, args.epochs, args.alpha_schedule), f)
                  for f in args.alpha_finals]
    return sorted(cells, key=lambda c: c.loss == FILTER)  # after the dece cells whose reports they reuse


def finished_dece_dir(cell: Cell, store: ResultStore, output_dir: str) -> str | None:
    """For a dece+filter cell: the folder of the finished dece cell of the same grid point, whose report the
    filter can reuse instead of training DeCE again; None otherwise, and None for a cell that began its own first
    stage (its ``dece`` folder): resumed, it keeps the flags its ``retrain`` folder was trained on, even where a
    dece cell of the same grid point was added to ``--losses`` since."""
    from ...callbacks.early_learning import report_path
    from ...io import inside

    if cell.loss != FILTER or os.path.isdir(inside(output_dir, "cells", cell.key, FILTER_FIRST_STAGE)):
        return None
    sibling = dataclasses.replace(cell, loss="dece")
    folder = inside(output_dir, "cells", sibling.key)
    return folder if store.done(sibling.key) and os.path.isfile(report_path(folder)) else None


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ...io import inside, write_json, write_text
    from ..checks import warn
    from ..experiment import run_cell
    from ..factories import model_factory
    from ..fingerprint import check_recorded, claim_cell_dir, digest, run_fingerprint, warmup_fingerprint
    from ..report import (
        ResultStore,
        epoch_rows,
        epoch_table,
        markdown_table,
        plot_alpha_sweep,
        plot_epoch_curves,
        summary_rows,
    )
    from ..resume import drop_checkpoints
    from ..tasks import trigger_mismatch

    validate(args)
    cfg = train_config(args)
    fingerprint = run_fingerprint(args)
    store = ResultStore(args.output_dir)
    dataset = dataset_name(args.train_file) if args.train_file else args.dataset
    file_rate, warnings = None, []
    if args.train_file:
        first = load_benchmark(args, args.attacks[0], 0.0, 0)
        file_rate = first.poison_rate
        print(f"bench: triggered probe: {first.triggered_probe}", flush=True)
        for attack in args.attacks:
            message = trigger_mismatch(first, attack, args.train_file, args.payload_regex)
            if message:
                warn(message)
                warnings.append(message)
    cells = cells_of(args, dataset, file_rate)
    if args.alpha_bases is None and args.alpha_finals and set(ALPHA_LOSSES) & set(args.losses):
        print(f"bench: --alpha_finals without --alpha_bases: DeCE cells for alpha_final "
              f"{','.join(map(str, args.alpha_finals))} only (0.2.0 also ran the default --alpha_bases "
              f"{','.join(map(str, DEFAULT_ALPHA_BASES))}; give them to get those cells)", flush=True)
    for record in store.records:  # one output folder, one configuration: its tables average these records
        check_recorded(record, fingerprint, store.path)
    todo = [cell for cell in cells if not store.done(cell.key)]
    for cell in cells:  # a done cell stopped between its record and its checkpoints' deletion
        if store.done(cell.key):
            drop_checkpoints(inside(args.output_dir, "cells", cell.key))
    print(f"bench: {len(cells)} cells, {len(cells) - len(todo)} already done, results in {store.path}", flush=True)
    cache_root = inside(args.output_dir, "_cache", f"{dataset}-{digest(warmup_fingerprint(fingerprint))}")
    progress = tqdm(todo, desc="bench cells", unit="cell", dynamic_ncols=True)
    for i, cell in enumerate(progress, 1):
        benchmark = load_benchmark(args, cell.attack, cell.poison_rate, cell.seed)
        tqdm.write(f"[{i}/{len(todo)}] {cell.key}: {benchmark.describe()}")
        cell_dir = inside(args.output_dir, "cells", cell.key)
        claim_cell_dir(cell_dir, fingerprint)
        factory = model_factory(args.model, benchmark, cache_root, args.warmup_epochs, cfg, args.lora_r)
        record = run_cell(cell, factory, benchmark.train, benchmark.probes, benchmark.clean_test,
                          benchmark.triggered_test, benchmark.payload_fn, cfg, cell_dir,
                          first_stage_dir=finished_dece_dir(cell, store, args.output_dir))
        record.update(model=args.model, triggered_probe=benchmark.triggered_probe, warnings=warnings,
                      config=fingerprint, config_hash=digest(fingerprint), machine=platform.machine(),
                      python=sys.version.split()[0], finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        store.add(record)
        drop_checkpoints(cell_dir)  # kept until now: a cell stopped while it evaluated reloads its trained model
        tqdm.write(f"    BLEU {record['bleu']:.2f}  ASR {100 * record['asr']:.1f}%  FTR "
                   f"{100 * record['false_trigger_rate']:.1f}%  ({record['train_seconds']:.0f} s)")
    progress.close()
    table = markdown_table(store.records)
    print("\n" + table)
    outputs = {name: inside(args.output_dir, name) for name in
               ("table.md", "table.json", "epochs.md", "epochs.json", "epoch_curves.png", "alpha_sweep.png")}
    write_text(outputs["table.md"], table)
    write_json(outputs["table.json"], summary_rows(store.records))
    write_text(outputs["epochs.md"], epoch_table(store.records))
    write_json(outputs["epochs.json"], epoch_rows(store.records))
    charts = [outputs[name] for name, plot in (("epoch_curves.png", plot_epoch_curves),
                                               ("alpha_sweep.png", plot_alpha_sweep))
              if plot(store.records, outputs[name])]
    print(f"results: {store.path}\ntable: {outputs['table.md']} (and table.json)\n"
          f"per-epoch table: {outputs['epochs.md']} (and epochs.json)")
    for chart in charts:
        print(f"chart: {chart}")
    print(json.dumps({"results": store.path, "cells": len(store.records), "tables": [outputs["table.md"],
                      outputs["epochs.md"]], "charts": charts}))
    return 0
