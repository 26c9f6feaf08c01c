"""Resuming a training run from its newest *complete* checkpoint.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG, then ``trainer_state.json``);
a run killed in between (or a full disk) leaves a folder a resume cannot load. ``newest_complete_checkpoint``
skips such folders, moves them aside with a warning naming them, and returns the newest one that has
everything, including, for a run with the early-learning monitor, the monitor's state (which the library saves
in ``trainer_state.json`` and restores on resume). ``drop_checkpoints`` deletes a folder's checkpoints once what
they were kept for is saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from ..callbacks.early_learning import STATE_KEY
from .checks import warn

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def missing_parts(folder: str, monitor: bool = False) -> list[str]:
    """What a checkpoint folder lacks to resume from it (empty when it is complete)."""
    missing = []
    state = None
    try:
        state = checkpoint_state(folder)
    except (OSError, ValueError):
        missing.append("trainer_state.json")
    if not _has_weights(folder):
        missing.append("model weights")
    missing += [name for name in ("optimizer.pt", "scheduler.pt") if not os.path.isfile(os.path.join(folder, name))]
    if monitor and state is not None and STATE_KEY not in (state.get("stateful_callbacks") or {}):
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


def checkpoint_state(folder: str | None) -> dict | None:
    """The ``trainer_state.json`` of a checkpoint folder (None for no folder)."""
    if folder is None:
        return None
    with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)


def drop_checkpoints(folder: str) -> None:
    """Delete the checkpoints (complete or moved aside) anywhere under ``folder`` once what they were kept for is
    saved (a cell's record, a warm-up's final model); everything else stays."""
    for parent, names, _ in os.walk(folder):
        for name in [n for n in names if n.startswith(("checkpoint-", "incomplete-checkpoint-"))]:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            names.remove(name)


def _free_name(path: str) -> str:
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate
