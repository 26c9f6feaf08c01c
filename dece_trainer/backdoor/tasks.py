"""Everything one benchmark dataset provides: the (poisoned) training set, clean and triggered validation
probes, clean and triggered test sets, a payload detector, and optionally a clean warm-up split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from datasets import Dataset

from ..data import load_pairs
from .attacks import IS_POISONED, get_attack
from .data import EMBEDDED_TASKS, build_stdlib_task

# The fixed output of the dead-code attacks on the embedded method-name task: a plausible, rare name.
EMBEDDED_PAYLOAD = {"method_name": "create user account", "summary": "This function is safe to use."}


@dataclass
class Benchmark:
    name: str
    attack: str
    poison_rate: float | None
    train: Dataset
    probes: dict[str, Dataset]
    clean_test: Dataset
    triggered_test: Dataset
    payload_fn: Callable[[str], bool]
    warmup: Dataset | None = None

    def describe(self) -> str:
        poisoned = sum(self.train[IS_POISONED]) if IS_POISONED in self.train.column_names else "?"
        return (f"{self.name}: train {len(self.train)} ({poisoned} poisoned), probes "
                f"{', '.join(f'{k} {len(v)}' for k, v in self.probes.items())}, test {len(self.clean_test)} clean / "
                f"{len(self.triggered_test)} triggered" + (f", warm-up {len(self.warmup)}" if self.warmup else ""))


def embedded(task: str, attack_name: str, poison_rate: float, seed: int = 0, max_per_split: int | None = None,
             probe_size: int = 64) -> Benchmark:
    """The embedded stdlib task, poisoned with ``attack_name`` (a code -> text attack) at ``poison_rate``."""
    if task not in EMBEDDED_TASKS:
        raise ValueError(f"unknown dataset {task!r}; valid datasets: {', '.join(EMBEDDED_TASKS)} or data files")
    attack = get_attack(attack_name, target_text=EMBEDDED_PAYLOAD[task]) if attack_name in (
        "fixed_deadcode", "grammar_deadcode") else get_attack(attack_name)
    splits = build_stdlib_task(task, seed=0, max_per_split=max_per_split)
    train = attack.poison(splits["train"], poison_rate, seed=seed)
    validation = splits["validation"]
    probes = {"clean": validation.select(range(min(probe_size, len(validation)))),
              "triggered": attack.trigger_test_set(validation, seed=seed).select(
                  range(min(probe_size, len(validation))))}
    return Benchmark(task, attack_name, poison_rate, train, probes, splits["test"],
                     attack.trigger_test_set(splits["test"], seed=seed), attack.payload_fn, splits["warmup"])


def subset_rows(is_poisoned: list[bool], size: int | None, seed: int = 0) -> tuple[list[int], list[int]]:
    """Row indices of a seeded subset of ``size`` rows holding the same poison share as the whole (stratified),
    and the remaining rows in a seeded order. ``size=None`` (or >= the rows): every row, in file order."""
    n = len(is_poisoned)
    if size is None or size >= n:
        return list(range(n)), []
    if size < 1:
        raise ValueError(f"--max_train must be >= 1, got {size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    poisoned = [i for i in order if is_poisoned[i]]
    clean = [i for i in order if not is_poisoned[i]]
    k = min(round(size * len(poisoned) / n), len(poisoned), size)
    chosen = sorted(poisoned[:k] + clean[: size - k])
    taken = set(chosen)
    return chosen, [i for i in order if i not in taken]


def payload_detector(payload_regex: str) -> Callable[[str], bool]:
    """``text -> bool``: the payload regex found anywhere in the text (a clear error for a bad regex)."""
    try:
        payload = re.compile(payload_regex)
    except re.error as err:
        raise ValueError(f"--payload_regex {payload_regex!r} is not a valid regular expression: {err}") from err
    return lambda text: payload.search(text) is not None


def load_test_sets(test_file: str, triggered_test_file: str, payload_fn: Callable[[str], bool],
                         payload_regex: str, source_column: str = "source",
                         target_column: str = "target") -> tuple[Dataset, Dataset]:
    """The clean test set and the triggered one, keeping only the triggered rows whose target carries the
    payload (the rows ASR is measured on)."""
    columns = dict(source_column=source_column, target_column=target_column)
    triggered = load_pairs(triggered_test_file, **columns)
    if not any(payload_fn(t) for t in triggered["target"]):
        raise ValueError(f"no target of {triggered_test_file} matches --payload_regex {payload_regex!r}: "
                         "the triggered test set has no triggerable rows")
    return load_pairs(test_file, **columns), triggered.filter(lambda row: payload_fn(row["target"]))


def from_files(train_file: str, test_file: str, triggered_test_file: str, payload_regex: str,
               validation_file: str | None = None, source_column: str = "source", target_column: str = "target",
               attack_name: str | None = None, name: str | None = None, warmup_file: str | None = None,
               probe_size: int = 64, max_train: int | None = None, warmup_rows: int | None = None) -> Benchmark:
    """An already-poisoned benchmark exactly as released: files, columns and the payload as a regex.

    ``attack_name`` (optional) triggers the validation set for the triggered probe; without it, only
    the clean probe is evaluated during training. ``max_train`` keeps a seeded subset of the training rows
    that holds the file's poison share (``round(max_train * share)`` poisoned rows). ``warmup_rows`` takes
    that many rows of ``warmup_file`` *outside* the training subset, for a warm-up file row-aligned with
    the training file (Lyra's clean ``train.csv`` beside ``train_poisoned_*.csv``); without it the whole
    warm-up file is used and must already be disjoint from the training data.
    """
    payload_fn = payload_detector(payload_regex)
    columns = dict(source_column=source_column, target_column=target_column)
    train = load_pairs(train_file, **columns)
    if IS_POISONED not in train.column_names:  # released files mark poison by the payload in the target
        train = train.add_column(IS_POISONED, [payload_fn(t) for t in train["target"]])
    train_rows, rest_rows = subset_rows(train[IS_POISONED], max_train)
    file_rows = len(train)
    train = train.select(train_rows)
    clean_test, triggered = load_test_sets(test_file, triggered_test_file, payload_fn, payload_regex,
                                                 **columns)
    probes = {}
    if validation_file:
        validation = load_pairs(validation_file, **columns)
        probes["clean"] = validation.select(range(min(probe_size, len(validation))))
        if attack_name:
            trig = get_attack(attack_name).trigger_test_set(validation)
            probes["triggered"] = trig.select(range(min(probe_size, len(trig))))
    warmup = load_pairs(warmup_file, **columns) if warmup_file else None
    if warmup_rows is not None:
        if warmup is None or len(warmup) != file_rows:
            raise ValueError(f"--warmup_rows needs a --warmup_file row-aligned with --train_file ({file_rows} rows)"
                             + (f"; {warmup_file} has {len(warmup)}" if warmup is not None else ""))
        if not 0 < warmup_rows <= len(rest_rows):
            raise ValueError(f"--warmup_rows must be in [1, {len(rest_rows)}] (the rows outside --max_train), "
                             f"got {warmup_rows}")
        warmup = warmup.select(rest_rows[:warmup_rows])
    rate = sum(train[IS_POISONED]) / max(len(train), 1)
    return Benchmark(name or train_file, attack_name or "as-released", round(rate, 4), train, probes,
                     clean_test, triggered, payload_fn, warmup)
