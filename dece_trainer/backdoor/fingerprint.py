"""What a ``bench`` result depends on, as a fingerprint: the model, the data (each file's content hash), and
every training and evaluation setting. A cell's record carries it, so a rerun in the same output folder with
other settings is refused instead of reusing results it did not produce; the caches (tokenizer, warm-up
model) are keyed by the part of it they depend on.

Pure Python (hashlib, json): the command parser imports this.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from .checks import MODEL_NAMES

FINGERPRINT_VERSION = 1
DATA_FILES = ("train_file", "validation_file", "test_file", "triggered_test_file", "triggered_validation_file",
              "warmup_file")
TRAINING = ("epochs", "learning_rate", "batch_size", "grad_accum", "max_source_tokens", "max_target_tokens",
            "label_smoothing", "alpha_schedule", "warmup_epochs", "bf16", "lora_r", "audit",
            "switch_epoch", "audit_confidence")
EVALUATION = ("max_new_tokens", "max_test", "probe_size", "codebleu_lang")
# Settings added to TRAINING after fingerprints were first recorded, with the value every run made before then had:
# an older record (or stamp) without them is read as having them, so its folder stays resumable.
ADDED_LATER = {"audit": False, "switch_epoch": 1, "audit_confidence": None}
# What the tokenizer and the warm-up model are built from (the cache key): not the fine-tune's own settings.
WARMUP_TRAINING = ("warmup_epochs", "learning_rate", "batch_size", "grad_accum", "max_source_tokens",
                   "max_target_tokens", "bf16")
WARMUP_DATA = ("train_file", "warmup_file", "source_column", "target_column", "payload_regex", "max_train",
               "warmup_rows", "dataset", "max_per_split", "python")

STAMP = "fingerprint.json"  # in each cell's folder: the settings its checkpoints were trained with

_digests: dict[tuple, dict] = {}


def file_digest(path: str) -> dict[str, Any]:
    """``{"name", "bytes", "sha256"}`` of a file's content (computed once per file version per process)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        _digests[key] = {"name": os.path.basename(path), "bytes": stat.st_size, "sha256": sha.hexdigest()}
    return _digests[key]


def model_identity(name: str) -> Any:
    """A built-in model or Hub id by name; a local folder by its path and its files' sizes and times."""
    if name in MODEL_NAMES or not os.path.isdir(os.path.expanduser(name)):
        return name
    folder = os.path.realpath(os.path.expanduser(name))
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file():
            stat = entry.stat()
            files[entry.name] = [stat.st_size, stat.st_mtime_ns]
    return {"path": folder, "files": files}


def data_settings(args: Any) -> dict[str, Any]:
    if getattr(args, "train_file", None):
        settings = {flag: file_digest(getattr(args, flag)) if getattr(args, flag, None) else None
                    for flag in DATA_FILES}
        settings.update(source_column=args.source_column, target_column=args.target_column,
                        payload_regex=args.payload_regex, max_train=args.max_train, warmup_rows=args.warmup_rows)
        return settings
    # the embedded task is extracted from this Python's standard library
    return {"dataset": args.dataset, "max_per_split": args.max_per_split,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def run_fingerprint(args: Any) -> dict[str, Any]:
    """Everything of a ``bench`` command line that affects a cell's result (the cell's own attack, rate, loss,
    alpha and seed are in its key)."""
    return {"version": FINGERPRINT_VERSION, "model": model_identity(args.model), "data": data_settings(args),
            "training": {k: getattr(args, k) for k in TRAINING},
            "evaluation": {k: getattr(args, k) for k in EVALUATION}}


def warmup_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's fingerprint the tokenizer and the warm-up model depend on."""
    return {"version": fingerprint["version"], "model": fingerprint["model"],
            "data": {k: v for k, v in fingerprint["data"].items() if k in WARMUP_DATA},
            "training": {k: v for k, v in fingerprint["training"].items() if k in WARMUP_TRAINING}}


def digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def upgraded(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` with the settings `ADDED_LATER` filled in where an older dece-trainer did not record them."""
    training = fingerprint.get("training")
    if not isinstance(training, dict) or all(k in training for k in ADDED_LATER):
        return fingerprint
    return {**fingerprint, "training": {**ADDED_LATER, **training}}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``"training.epochs 1.0 -> 2.0; model 'tiny' -> 'small'"``: what changed between two fingerprints."""
    a, b = _flatten(old), _flatten(new)
    changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more


def check_recorded(record: dict[str, Any], fingerprint: dict[str, Any], where: str) -> None:
    """Raise unless ``record`` (a finished cell in ``where``) was produced with ``fingerprint``."""
    remedy = (f"use another --output_dir, or delete the cell's record in {where} (and its folder) to rerun it")
    if "config_hash" not in record:
        raise ValueError(f"cell {record.get('key')} in {where} was recorded without a configuration fingerprint "
                         f"(by an older dece-trainer), so it cannot be checked against this run's settings: {remedy}")
    recorded = upgraded(record["config"]) if isinstance(record.get("config"), dict) else None
    if (digest(recorded) if recorded is not None else record["config_hash"]) != digest(upgraded(fingerprint)):
        raise ValueError(f"cell {record['key']} in {where} was produced with other settings "
                         f"({differences(recorded or {}, fingerprint)}): {remedy}")


def _resumable(cell_dir: str) -> str | None:
    """What a rerun would reuse from the cell's folder, in words, or None: checkpoints in the folder or in its
    stage folders (a dece+filter cell's ``dece/``, ``retrain/``), or the report of a dece+filter cell's finished
    first stage (which the rerun reads instead of training it again)."""
    from ..callbacks.early_learning import report_path
    from .grid import FILTER_FIRST_STAGE

    if not os.path.isdir(cell_dir):
        return None
    folders = [cell_dir] + [os.path.join(cell_dir, n) for n in os.listdir(cell_dir)
                            if os.path.isdir(os.path.join(cell_dir, n)) and not n.startswith("checkpoint-")]
    if any(n.startswith("checkpoint-") for folder in folders for n in os.listdir(folder)):
        return "checkpoints"
    if os.path.isfile(report_path(os.path.join(cell_dir, FILTER_FIRST_STAGE))):
        return f"a finished DeCE first stage ({FILTER_FIRST_STAGE}/)"
    return None


def claim_cell_dir(cell_dir: str, fingerprint: dict[str, Any]) -> None:
    """Stamp a cell's folder with this run's fingerprint before training in it; refuse to reuse what an
    interrupted run (or one whose record was deleted) left there with other (or unrecorded) settings:
    checkpoints, or a dece+filter cell's first-stage report."""
    from ..io import write_json

    stamp = os.path.join(cell_dir, STAMP)
    left = _resumable(cell_dir)
    if left:
        try:
            with open(stamp, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is None or digest(upgraded(old)) != digest(upgraded(fingerprint)):
            what = differences(old, fingerprint) if old is not None else "its settings were not recorded"
            raise ValueError(f"{cell_dir} holds {left} of an interrupted run with other settings ({what}): "
                             "delete that folder to train the cell afresh, or use another --output_dir")
    write_json(stamp, fingerprint)
