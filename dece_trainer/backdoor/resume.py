"""Resuming a training run from its newest *complete* checkpoint.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG, then ``trainer_state.json``);
a run killed in between (or a full disk) leaves a folder a resume cannot load. ``newest_complete_checkpoint``
skips such folders, moves them aside with a warning naming them, and returns the newest one that has
everything. The early-learning monitor keeps its per-example history in memory; ``MonitorCheckpoint`` saves
it in each checkpoint and restores it on resume, so a resumed run reports what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..io import atomic_write, write_json
from .checks import warn

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
MONITOR_STATE = "early_learning_state.npz"
MONITOR_META = "early_learning_state.json"
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def missing_parts(folder: str, monitor: bool = False) -> list[str]:
    """What a checkpoint folder lacks to resume from it (empty when it is complete)."""
    missing = []
    state = os.path.join(folder, "trainer_state.json")
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        missing.append("trainer_state.json")
    if not _has_weights(folder):
        missing.append("model weights")
    missing += [name for name in ("optimizer.pt", "scheduler.pt") if not os.path.isfile(os.path.join(folder, name))]
    if monitor and not all(os.path.isfile(os.path.join(folder, n)) for n in (MONITOR_STATE, MONITOR_META)):
        missing.append("early-learning state")
    return missing


def _has_weights(folder: str) -> bool:
    if any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHTS):
        return True
    for index in SHARD_INDEXES:
        try:
            with open(os.path.join(folder, index), encoding="utf-8") as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if shards and all(os.path.isfile(os.path.join(folder, s)) for s in shards):
            return True
    return False


def newest_complete_checkpoint(out_dir: str, monitor: bool = False) -> str | None:
    """The newest checkpoint folder of ``out_dir`` a run can resume from, or None. Incomplete ones newer than
    it are renamed ``incomplete-checkpoint-N`` (kept for inspection, ignored by the Trainer) with a warning."""
    if not os.path.isdir(out_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(out_dir)
                    if (m := CHECKPOINT.fullmatch(name)) and os.path.isdir(os.path.join(out_dir, name))), reverse=True)
    for _, name in found:
        folder = os.path.join(out_dir, name)
        missing = missing_parts(folder, monitor)
        if not missing:
            return folder
        aside = _free_name(os.path.join(out_dir, f"incomplete-{name}"))
        os.replace(folder, aside)
        warn(f"{folder} is incomplete (no {', '.join(missing)}: the run was killed or the disk filled while saving "
             f"it); moved it aside to {aside} and resuming from the newest complete checkpoint, if any")
    return None


def _free_name(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


# ---- the early-learning monitor's history across a resume -------------------------------------------

_ARRAYS = ("loss", "prob", "worst_prob", "visits")


class MonitorCheckpoint(TrainerCallback):
    """Saves the ``EarlyLearningCallback``'s finished epochs into each checkpoint (after the Trainer wrote it)
    and restores them when training resumes from ``resume_from``. Register it after the monitor."""

    def __init__(self, monitor: Any, resume_from: str | None = None):
        self.monitor, self.resume_from = monitor, resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_from and self.monitor.history is not None:
            load_monitor_state(self.monitor, self.resume_from)

    def on_save(self, args, state, control, **kwargs):
        if self.monitor.history is not None and state.is_world_process_zero:
            save_monitor_state(self.monitor, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


def save_monitor_state(monitor: Any, folder: str) -> None:
    history = monitor.history
    arrays = {f"{name}_{i}": a for name in _ARRAYS for i, a in enumerate(getattr(history, name))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(os.path.join(folder, MONITOR_STATE), write)
    write_json(os.path.join(folder, MONITOR_META), {
        "epochs": history.num_epochs, "num_examples": history.num_examples, "alarm_step": monitor.alarm_step,
        "clean_signal": [list(x) for x in monitor._clean_signal], "memorisation": list(monitor._memorisation)})


def load_monitor_state(monitor: Any, folder: str) -> None:
    with open(os.path.join(folder, MONITOR_META), encoding="utf-8") as f:
        meta = json.load(f)
    history = monitor.history
    if meta["num_examples"] != history.num_examples:
        raise ValueError(f"{folder}: its early-learning state is for {meta['num_examples']} training examples, "
                         f"this run has {history.num_examples}")
    with np.load(os.path.join(folder, MONITOR_STATE)) as arrays:
        for name in _ARRAYS:
            setattr(history, name, [arrays[f"{name}_{i}"] for i in range(meta["epochs"])])
    monitor.alarm_step = meta["alarm_step"]
    monitor._clean_signal = [(int(step), float(value)) for step, value in meta["clean_signal"]]
    monitor._memorisation = [int(x) for x in meta["memorisation"]]
