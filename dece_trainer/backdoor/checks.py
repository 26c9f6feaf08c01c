"""Argument checks of the harness commands (``bench``, ``demo``, ``eval``), run before anything is loaded, so
a bad flag fails in well under a second with a message naming it.

Pure Python (plus ``huggingface_hub``, imported only to look a Hub id up, in `dece_trainer.validation`): the
command parsers import this.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Iterable

from .. import validation
from ..validation import check_int, check_label_smoothing, check_number

# The models the harness builds by name (``models.SMALL_SIZES`` and ``models.SMOLLM2``).
SMALL_MODELS = ("tiny", "small", "base")
MODEL_NAMES = (*SMALL_MODELS, "smollm2")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def warn(message: str) -> None:
    """A warning on stderr, one line, flushed (so it shows between progress bars)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_name(value: str, what: str) -> str:
    """A name that becomes part of an output path (an attack, a dataset named after its file): letters,
    digits and ``._+-``, not starting with a dot; anything else could leave the output folder."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} cannot name an output folder: use letters, digits and '._+-' "
                         "(no path separators, no leading dot)")
    return value


def dataset_name(path: str) -> str:
    """The dataset name of a data file: its file name without the extension, any character outside
    letters, digits and ``._+-`` replaced by ``_`` (it names cells and cache folders)."""
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".") or "data"


def check_regex(pattern: str, flag: str = "--payload_regex") -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{flag} {pattern!r} is not a valid regular expression: {err}") from err
    return pattern


def optional_float(text: str) -> float | None:
    """An argparse ``type``: a number, or ``none`` for None (checked later, by the command's own checks)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def check_positive_ints(args: Any, names: Iterable[str], *, minimum: int = 1, optional: bool = False) -> None:
    for name in names:
        check_int(getattr(args, name), f"--{name}", minimum=minimum, allow_none=optional)


def check_training_numbers(args: Any) -> None:
    """Every number of ``bench``'s model-and-training group that could make a run meaningless."""
    check_number(args.epochs, "--epochs", low=0.0, low_open=True)
    check_number(args.warmup_epochs, "--warmup_epochs", low=0.0)
    check_number(args.learning_rate, "--learning_rate", low=0.0, low_open=True)
    check_label_smoothing(args.label_smoothing, "--label_smoothing")
    check_positive_ints(args, ("batch_size", "grad_accum", "max_source_tokens", "max_target_tokens",
                               "max_new_tokens", "probe_size"))
    check_positive_ints(args, ("max_test",), optional=True)
    check_int(args.lora_r, "--lora_r", minimum=0)


def check_model(name: str, *, built_in: Iterable[str] = MODEL_NAMES) -> str:
    """``--model``: a name the harness builds (``built_in``), an existing local model folder, or a Hub id that
    can be reached (in the local Hub cache when ``HF_HUB_OFFLINE`` is set). Checked before any setup; the library's
    `dece_trainer.validation.check_model`, which ``train`` uses too."""
    return validation.check_model(name, flag="--model", built_in=built_in)
