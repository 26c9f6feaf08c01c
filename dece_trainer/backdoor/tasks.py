"""Everything one benchmark dataset provides: the (poisoned) training set, clean and triggered validation
probes, clean and triggered test sets, a payload detector, and optionally a clean warm-up split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from datasets import Dataset

from ..data import load_pairs
from .attacks import ATTACKS, IS_POISONED, Attack, get_attack
from .checks import dataset_name
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
    triggered_probe: str = ""  # where the per-epoch triggered probe comes from, in words

    def describe(self) -> str:
        poisoned = sum(self.train[IS_POISONED]) if IS_POISONED in self.train.column_names else "?"
        return (f"{self.name}: train {len(self.train)} ({poisoned} poisoned), probes "
                f"{', '.join(f'{k} {len(v)}' for k, v in self.probes.items())}, test {len(self.clean_test)} clean / "
                f"{len(self.triggered_test)} triggered" + (f", warm-up {len(self.warmup)}" if self.warmup else "")
                + (f"; triggered probe: {self.triggered_probe}" if self.triggered_probe else ""))


def embedded_attack(task: str, attack_name: str) -> Attack:
    """``attack_name`` set up for the embedded ``task``: the dead-code attacks output ``EMBEDDED_PAYLOAD``,
    the adaptive family its own payloads of the task's frequent target words."""
    if attack_name in ("fixed_deadcode", "grammar_deadcode"):
        return get_attack(attack_name, target_text=EMBEDDED_PAYLOAD[task])
    if attack_name.startswith("adaptive"):
        return get_attack(attack_name, task=task)
    return get_attack(attack_name)


def embedded(task: str, attack_name: str, poison_rate: float, seed: int = 0, max_per_split: int | None = None,
             probe_size: int = 64) -> Benchmark:
    """The embedded stdlib task, poisoned with ``attack_name`` (a code -> text attack) at ``poison_rate``."""
    if task not in EMBEDDED_TASKS:
        raise ValueError(f"unknown dataset {task!r}; valid datasets: {', '.join(EMBEDDED_TASKS)} or data files")
    attack = embedded_attack(task, attack_name)
    splits = build_stdlib_task(task, seed=0, max_per_split=max_per_split)
    train = attack.poison(splits["train"], poison_rate, seed=seed)
    validation = splits["validation"]
    probes = {"clean": validation.select(range(min(probe_size, len(validation)))),
              "triggered": attack.trigger_test_set(validation, seed=seed, origin="the validation split").select(
                  range(min(probe_size, len(validation))))}
    return Benchmark(task, attack_name, poison_rate, train, probes, splits["test"],
                     attack.trigger_test_set(splits["test"], seed=seed), attack.payload_fn, splits["warmup"],
                     triggered_probe=f"{attack_name} applied to the validation split (the attack that poisoned "
                                     "the training split)")


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


def load_file(flag: str, path: str, source_column: str = "source", target_column: str = "target") -> Dataset:
    """``load_pairs`` with the command-line flag that named the file in its error messages."""
    try:
        return load_pairs(path, source_column=source_column, target_column=target_column)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from err


def payload_rows(flag: str, path: str, payload_fn: Callable[[str], bool], payload_regex: str,
                 source_column: str = "source", target_column: str = "target") -> Dataset:
    """The rows of a triggered file whose target carries the payload (the rows ASR is measured on)."""
    data = load_file(flag, path, source_column, target_column)
    kept = data.select([i for i, target in enumerate(data["target"]) if payload_fn(target)])
    if len(kept) == 0:
        raise ValueError(f"{flag}: no target of {path} matches --payload_regex {payload_regex!r}: the triggered "
                         "set has no triggerable rows")
    return kept


def load_test_sets(test_file: str, triggered_test_file: str, payload_fn: Callable[[str], bool],
                   payload_regex: str, source_column: str = "source",
                   target_column: str = "target") -> tuple[Dataset, Dataset]:
    """The clean test set and the triggered one, keeping only the triggered rows whose target carries the
    payload (the rows ASR is measured on)."""
    columns = dict(source_column=source_column, target_column=target_column)
    triggered = payload_rows("--triggered_test_file", triggered_test_file, payload_fn, payload_regex, **columns)
    return load_file("--test_file", test_file, **columns), triggered


def from_files(train_file: str, test_file: str, triggered_test_file: str, payload_regex: str,
               validation_file: str | None = None, source_column: str = "source", target_column: str = "target",
               attack_name: str | None = None, name: str | None = None, warmup_file: str | None = None,
               probe_size: int = 64, max_train: int | None = None, warmup_rows: int | None = None,
               triggered_validation_file: str | None = None) -> Benchmark:
    """An already-poisoned benchmark exactly as released: files, columns and the payload as a regex.

    The per-epoch triggered probe always carries the benchmark's own trigger: the payload rows of
    ``triggered_validation_file`` when given; otherwise, with a ``validation_file``, the last
    ``min(probe_size, half)`` payload rows of ``triggered_test_file``, held out of the test metrics
    (``Benchmark.triggered_probe`` says which). ``attack_name`` only labels the benchmark: the files were
    made by whatever trigger their authors used, never re-triggered here. ``max_train`` keeps a seeded
    subset of the training rows that holds the file's poison share (``round(max_train * share)`` poisoned
    rows). ``warmup_rows`` takes that many rows of ``warmup_file`` *outside* the training subset, for a warm-up
    file row-aligned with the training file (Lyra's clean ``train.csv`` beside ``train_poisoned_*.csv``);
    without it the whole warm-up file is used and must already be disjoint from the training data.
    """
    payload_fn = payload_detector(payload_regex)
    columns = dict(source_column=source_column, target_column=target_column)
    train = load_file("--train_file", train_file, **columns)
    poisoned = [payload_fn(t) for t in train["target"]]  # released files mark poison by the payload
    if IS_POISONED in train.column_names:
        if all(isinstance(v, bool) for v in train[IS_POISONED]):
            poisoned = train[IS_POISONED]
        train = train.remove_columns(IS_POISONED)
    train = train.add_column(IS_POISONED, poisoned)
    train_rows, rest_rows = subset_rows(train[IS_POISONED], max_train)
    file_rows = len(train)
    train = train.select(train_rows)
    clean_test, triggered = load_test_sets(test_file, triggered_test_file, payload_fn, payload_regex, **columns)
    probes, probe_note = {}, "none (no --validation_file or --triggered_validation_file)"
    if validation_file:
        validation = load_file("--validation_file", validation_file, **columns)
        probes["clean"] = validation.select(range(min(probe_size, len(validation))))
    if triggered_validation_file:
        trig = payload_rows("--triggered_validation_file", triggered_validation_file, payload_fn, payload_regex,
                            **columns)
        probes["triggered"] = trig.select(range(min(probe_size, len(trig))))
        probe_note = (f"{len(probes['triggered'])} payload rows of --triggered_validation_file "
                      f"{triggered_validation_file}")
    elif validation_file:
        held = min(probe_size, len(triggered) // 2)
        if held >= 1:
            probes["triggered"] = triggered.select(range(len(triggered) - held, len(triggered)))
            triggered = triggered.select(range(len(triggered) - held))
            probe_note = (f"the last {held} payload rows of --triggered_test_file {triggered_test_file}, held out "
                          "of the test metrics (give --triggered_validation_file to keep them)")
        else:
            probe_note = (f"none: --triggered_test_file {triggered_test_file} has too few payload rows to hold some "
                          "out (give --triggered_validation_file)")
    warmup = load_file("--warmup_file", warmup_file, **columns) if warmup_file else None
    if warmup_rows is not None:
        if warmup is None or len(warmup) != file_rows:
            raise ValueError(f"--warmup_rows needs a --warmup_file row-aligned with --train_file ({file_rows} rows)"
                             + (f"; {warmup_file} has {len(warmup)}" if warmup is not None else ""))
        if not 0 < warmup_rows <= len(rest_rows):
            raise ValueError(f"--warmup_rows must be in [1, {len(rest_rows)}] (the rows outside --max_train), "
                             f"got {warmup_rows}")
        warmup = warmup.select(rest_rows[:warmup_rows])
    rate = sum(train[IS_POISONED]) / max(len(train), 1)
    return Benchmark(name or dataset_name(train_file), attack_name or "as-released", round(rate, 4), train, probes,
                     clean_test, triggered, payload_fn, warmup, triggered_probe=probe_note)


def trigger_mismatch(benchmark: Benchmark, attack_name: str, train_file: str, payload_regex: str) -> str | None:
    """A warning when ``attack_name``'s trigger is missing from most poisoned training rows of a released file
    (poisoned: the target matches ``payload_regex``), i.e. the files were made by another trigger; else None."""
    sources = [s for s, p in zip(benchmark.train["source"], benchmark.train[IS_POISONED]) if p]
    if not sources:
        return (f"no training row of --train_file {train_file} has a target matching --payload_regex "
                f"{payload_regex!r}: the file carries no poison this regex detects")
    if attack_name not in ATTACKS:
        return None
    attack = get_attack(attack_name)
    found = sum(attack.has_trigger(s) for s in sources)
    if 2 * found >= len(sources):
        return None
    return (f"--attacks {attack_name}: {attack.describe_trigger()} is in only {found} of the {len(sources)} poisoned "
            f"rows of --train_file {train_file} (rows whose target matches --payload_regex {payload_regex!r}): the "
            f"file was made with another trigger. The per-epoch triggered probe uses {benchmark.triggered_probe}, "
            f"not {attack_name}.")
