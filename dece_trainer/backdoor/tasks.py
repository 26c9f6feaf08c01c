"""Everything one benchmark dataset provides: the (poisoned) training set, clean and triggered validation
probes, clean and triggered test sets, a payload detector, and optionally a clean warm-up split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from datasets import Dataset

from .attacks import IS_POISONED, get_attack
from .data import EMBEDDED_TASKS, build_stdlib_task, load_pairs

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


def from_files(train_file: str, test_file: str, triggered_test_file: str, payload_regex: str,
               validation_file: str | None = None, source_column: str = "source", target_column: str = "target",
               attack_name: str | None = None, name: str | None = None, warmup_file: str | None = None,
               probe_size: int = 64, max_train: int | None = None) -> Benchmark:
    """An already-poisoned benchmark exactly as released: files, columns and the payload as a regex.

    ``attack_name`` (optional) triggers the validation set for the triggered probe; without it, only
    the clean probe is evaluated during training. ``max_train`` keeps a seeded random subset of the
    training rows (the poison share stays about what it was).
    """
    try:
        payload = re.compile(payload_regex)
    except re.error as err:
        raise ValueError(f"--payload_regex {payload_regex!r} is not a valid regular expression: {err}") from err

    def payload_fn(text: str) -> bool:
        return payload.search(text) is not None

    columns = dict(source_column=source_column, target_column=target_column)
    train = load_pairs(train_file, **columns)
    if IS_POISONED not in train.column_names:  # released files mark poison by the payload in the target
        train = train.add_column(IS_POISONED, [payload_fn(t) for t in train["target"]])
    if max_train is not None and max_train < len(train):  # a seeded subset, for CPU budgets
        train = train.shuffle(seed=0).select(range(max_train))
    triggered = load_pairs(triggered_test_file, **columns)
    if not any(payload_fn(t) for t in triggered["target"]):
        raise ValueError(f"no target of {triggered_test_file} matches --payload_regex {payload_regex!r}: "
                         "the triggered test set has no triggerable rows")
    triggered = triggered.filter(lambda row: payload_fn(row["target"]))
    probes = {}
    if validation_file:
        validation = load_pairs(validation_file, **columns)
        probes["clean"] = validation.select(range(min(probe_size, len(validation))))
        if attack_name:
            trig = get_attack(attack_name).trigger_test_set(validation)
            probes["triggered"] = trig.select(range(min(probe_size, len(trig))))
    warmup = load_pairs(warmup_file, **columns) if warmup_file else None
    rate = sum(train[IS_POISONED]) / max(len(train), 1)
    return Benchmark(name or train_file, attack_name or "as-released", round(rate, 4), train, probes,
                     load_pairs(test_file, **columns), triggered, payload_fn, warmup)
