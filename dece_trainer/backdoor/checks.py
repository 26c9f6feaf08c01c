"""Argument checks of the harness commands (``bench``, ``demo``, ``eval``), run before anything is loaded, so
a bad flag fails in well under a second with a message naming it.

Pure Python (plus ``huggingface_hub``, imported only to look a Hub id up): the command parsers import this.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from ..validation import check_int, check_label_smoothing, check_number

# The models the harness builds by name (``models.SMALL_SIZES`` and ``models.SMOLLM2``).
SMALL_MODELS = ("tiny", "small", "base")
MODEL_NAMES = (*SMALL_MODELS, "smollm2")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model(name: str, *, built_in: Iterable[str] = MODEL_NAMES) -> str:
    """``--model``: a name the harness builds (``built_in``), an existing local model folder, or a Hub id that
    can be reached (in the local Hub cache when ``HF_HUB_OFFLINE`` is set). Checked before any setup."""
    built_in = tuple(built_in)
    valid = f"valid: {', '.join(built_in)}, an existing local model folder, or a Hub id (when online)"
    if name in built_in:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {name!r}: the folder has no config.json, so it is not a saved model ({valid})")
        return name
    if name.startswith((".", "/", "~")) or path.exists() or not _HUB_ID.fullmatch(name):
        raise ValueError(f"--model {name!r}: model path does not exist ({valid})")
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"--model {name!r} is not a model name, not a local folder, and not in the local Hub "
                             f"cache; HF_HUB_OFFLINE is set, so it cannot be downloaded ({valid})")
        return name
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, "config.json")
    except Exception as err:  # noqa: BLE001 - not found, gated, or no connection: all the same to the user
        raise ValueError(f"--model {name!r} is not a model name or a local folder, and the Hub did not give its "
                         f"config ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}) "
                         f"({valid})") from err
    return name
