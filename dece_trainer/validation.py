"""One home for argument checks: every entry point (functional loss, module, schedule, settings, callback,
CLI) validates through these, so the same bad value gets the same message everywhere.

Pure Python (``numbers``, ``math``; ``huggingface_hub`` imported by `check_model` only when it looks a Hub id
up, torch by the tensor checks of the loss functions' inputs when they run): no torch, no transformers at import,
so a command line checks its flags before loading anything. Numbers are accepted as any
``numbers.Real`` (Python and numpy scalars) but never ``bool``; NaN and infinities are refused unless a
check says otherwise. Each check returns the value converted to a plain Python ``float``/``int``/``str``,
and raises ``ValueError`` naming the argument, the allowed values and what it got.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Iterable

REDUCTIONS = ("mean", "sum", "none")
SCHEDULES = ("epoch", "continuous")
DEBUG_ENV = "DECE_TRAINER_DEBUG"  # 1: check label ranges on accelerators too (a host sync)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # a Hub repository id: ``name`` or ``owner/name``


def _fail(name: str, allowed: str, value: Any) -> ValueError:
    return ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def _real(value: Any, name: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, allowed, value)
    value = float(value)
    if math.isnan(value):
        raise _fail(name, allowed, value)
    return value


def check_number(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in ``[low, high]`` (an open end where ``low_open`` / ``high_open``)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = f"a finite number in {left}{low:g}, {high:g}{right}"
    x = _real(value, name, allowed)
    if math.isinf(x) or x < low or x > high or (low_open and x == low) or (high_open and x == high):
        raise _fail(name, allowed, value)
    return x


def check_alpha(value: Any, name: str = "alpha") -> float:
    """A DeCE blend weight: a number in (0, 1] (1 is plain, label-smoothed cross-entropy)."""
    return check_number(value, name, low=0.0, high=1.0, low_open=True)


def check_alpha_pair(alpha_base: Any, alpha_final: Any, names: tuple[str, str] = ("alpha_base", "alpha_final"),
                     flags: tuple[str, str] = ("--dece_alpha_base", "--dece_alpha_final")) -> None:
    """At most one of ``alpha_base`` and ``alpha_final``: ``alpha_final`` derives the base from the run length, so a
    given base beside it would be dropped without a word."""
    if alpha_base is not None and alpha_final is not None:
        raise ValueError(f"`{names[0]}={alpha_base}` and `{names[1]}={alpha_final}` cannot both be set "
                         f"({flags[0]} and {flags[1]}): `{names[1]}` derives the epoch-1 alpha from the run length, "
                         f"so the given `{names[0]}` would be ignored. Give one of them.")


def check_label_smoothing(value: Any, name: str = "label_smoothing") -> float:
    """A label-smoothing share: a number in [0, 1)."""
    return check_number(value, name, low=0.0, high=1.0, high_open=True)


def check_probability(value: Any, name: str) -> float:
    """A probability strictly between 0 and 1 (a threshold such as ``fit_threshold``)."""
    return check_number(value, name, low=0.0, high=1.0, low_open=True, high_open=True)


def check_int(value: Any, name: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """An integer (Python or numpy, never bool), at least ``minimum`` when given; None when ``allow_none``."""
    if value is None and allow_none:
        return None
    allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(name, allowed, value)
    if minimum is not None and value < minimum:
        raise _fail(name, allowed, value)
    return int(value)


def check_choice(value: Any, choices: Iterable[str], name: str) -> str:
    """One of ``choices`` (strings, compared exactly)."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise _fail(name, f"one of {choices}", value)
    return value


def check_reduction(value: Any, name: str = "reduction") -> str:
    return check_choice(value, REDUCTIONS, name)


def check_schedule(value: Any, name: str = "schedule") -> str:
    return check_choice(value, SCHEDULES, name)


def check_epoch(value: Any, name: str = "epoch", *, one_based: bool = False) -> float:
    """A trainer epoch: 0-based fractional (``>= 0``, ``TrainerState.epoch``) or 1-based (``>= 1``)."""
    return check_number(value, name, low=1.0 if one_based else 0.0)


def check_num_items(value: Any, name: str = "num_items_in_batch") -> Any:
    """The denominator of a token mean: None, a number >= 1, or a one-element integer/float tensor (not read
    on the host, so no device sync; it is clamped to >= 1 where it is used)."""
    allowed = "None, a number >= 1 or a one-element numeric tensor"
    if value is None:
        return None
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise _fail(name, allowed, value)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, allowed, value)
    return check_number(value, name, low=1.0)


def check_num_items_in_batch(value: Any) -> Any:
    """`check_num_items`, also accepting 0 for numbers: the Trainer's token count of an accumulated batch whose
    labels are all ignored (the mean is then 0)."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.Tensor):
        return check_num_items(value)
    return check_number(value, "num_items_in_batch", low=0.0)


# ---- tensors (the loss functions' inputs; torch is imported by the check, never by this module) ---------------------


def check_float_tensor(value: Any, name: str, min_dim: int) -> None:
    """A floating-point tensor with at least ``min_dim`` dimensions."""
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < min_dim:
        got = f"a {value.dim()}-d {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a floating-point tensor with at least {min_dim} dimension(s), got {got}.")


def check_vocab(vocab: int, source: str) -> None:
    """At least 2 classes in the last dimension of ``source`` (``logits``, or the LM head's ``weight``)."""
    if vocab < 2:
        raise ValueError(f"`{source}` must have at least 2 classes, got {vocab}.")


def check_labels(labels: Any, source_shape: Any, source: str) -> None:
    """Labels must be integer class indices shaped like ``source_shape[:-1]`` (the shape of ``source``, the logits or
    the hidden states, without its last dimension). Their range is `check_label_range`'s."""
    import torch

    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be an integer tensor of class indices, got "
                         f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}.")
    if labels.shape != source_shape[:-1]:
        raise ValueError(f"`{source}` must have shape (..., {'V' if source == 'logits' else 'd'}) and `labels` the "
                         f"same leading shape: got {source} {tuple(source_shape)} and labels {tuple(labels.shape)} "
                         f"(no shifting is done inside the loss).")


def check_label_range(labels: Any, vocab: int, ignore_index: int) -> None:
    """Every label in ``[0, vocab)`` or ``ignore_index``; checked only where reading the labels on the host is free
    (CPU tensors) or when ``DECE_TRAINER_DEBUG=1`` (elsewhere a bad label is the device's own index error)."""
    if labels.device.type == "cpu" or os.environ.get(DEBUG_ENV) == "1":
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
        if bool(bad.any()):
            value = labels[bad].flatten()[0].item()
            raise ValueError(
                f"`labels` must be in [0, {vocab}) or equal to ignore_index={ignore_index}; found {value}."
            )


def check_lm_head(hidden: Any, weight: Any, bias: Any, labels: Any, ignore_index: int) -> None:
    """The fused LM head's tensors: hidden (..., d), weight (V, d), optional bias (V,), labels (...) in range, all on
    one device."""
    check_float_tensor(hidden, "hidden", 1)
    check_float_tensor(weight, "weight", 2)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"`weight` must have shape (V, d) with d = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got {tuple(weight.shape)}.")
    check_vocab(weight.shape[0], "weight")
    if bias is not None:
        check_float_tensor(bias, "bias", 1)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"`bias` must have shape (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}.")
    check_labels(labels, hidden.shape, "hidden")
    for name, t in (("weight", weight), ("bias", bias), ("labels", labels)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"`{name}` is on {t.device} but `hidden` on {hidden.device}; put them on one device.")
    check_label_range(labels, weight.shape[0], ignore_index)


# ---- other arguments ------------------------------------------------------------------------------------------------


def check_ignore_index(value: Any, name: str = "ignore_index") -> int:
    """The label value to skip: an integer (usually -100)."""
    return check_int(value, name)


def check_bool(value: Any, name: str) -> bool:
    """A real ``bool`` (Python or numpy), not a truthy stand-in such as ``"no"`` or ``1``."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise _fail(name, "True or False", value)
    return bool(value)


def check_name(value: Any, name: str, *, allow_none: bool = False) -> str | None:
    """A non-empty string (a column or key name); None when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(name, "a non-empty string" + (" or None" if allow_none else ""), value)
    return value


def check_callable(value: Any, name: str, what: str, *, allow_none: bool = False) -> Any:
    """A callable (``what`` says what it should do, e.g. ``"text -> bool"``); None when ``allow_none``."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise _fail(name, f"a callable {what}" + (" or None" if allow_none else ""), value)
    return value


def check_texts(value: Any, name: str, *, allow_empty: bool = True) -> list[str]:
    """A list or tuple of strings (texts to score or clean); non-empty unless ``allow_empty``."""
    allowed = "a list of strings" + ("" if allow_empty else " (at least one)")
    if not isinstance(value, (list, tuple)):
        raise _fail(name, allowed, value)
    bad = next((i for i, t in enumerate(value) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"`{name}` must be {allowed}, got {type(value[bad]).__name__} {value[bad]!r} at index {bad}.")
    if not value and not allow_empty:
        raise _fail(name, allowed, value)
    return list(value)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model(name: str, *, flag: str = "--model", built_in: Iterable[str] = ()) -> str:
    """A model to load (``flag`` names it in the messages): a name the caller builds itself (``built_in``), an
    existing local model folder (with a ``config.json``), or a Hub id that can be reached (in the local Hub cache
    when ``HF_HUB_OFFLINE`` is set). The one check of every command's model flag, run before anything is loaded."""
    built_in = tuple(built_in)
    valid = "valid: " + ", ".join((*built_in, "an existing local model folder", "or a Hub id (when online)"))
    if name in built_in:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{flag} {name!r}: the folder has no config.json, so it is not a saved model ({valid})")
        return name
    if name.startswith((".", "/", "~")) or path.exists() or not HUB_ID.fullmatch(name):
        raise ValueError(f"{flag} {name!r}: model path does not exist ({valid})")
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"{flag} {name!r} is not a model name, not a local folder, and not in the local Hub "
                             f"cache; HF_HUB_OFFLINE is set, so it cannot be downloaded ({valid})")
        return name
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(name, "config.json")
    except Exception as err:  # noqa: BLE001 - not found, gated, or no connection: all the same to the user
        raise ValueError(f"{flag} {name!r} is not a model name or a local folder, and the Hub did not give its "
                         f"config ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}) "
                         f"({valid})") from err
    return name


def check_example_ids(values: Any, name: str = "example_id", where: str = "the training dataset") -> Any:
    """Example ids (a column of ``where``): unique non-negative integers (never bool or float). Returns them as an
    int64 numpy array in their order; the error names the column and up to five offending values."""
    import numpy as np

    head = f"`{name}` of {where} must hold unique non-negative integers (dece_trainer.add_example_ids gives 0..n-1)"
    try:
        ids = np.asarray(values)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{head}: cannot read it as an array ({err})") from err
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"{head}, one per row: got an array of shape {ids.shape}")
    if ids.dtype.kind not in "iu" or (ids.dtype.kind == "u" and ids.max() > np.iinfo(np.int64).max):
        bad = [v for v in ids.tolist() if isinstance(v, bool) or not isinstance(v, numbers.Integral)][:5]
        raise ValueError(f"{head}: got {ids.dtype} values such as {bad or ids[:5].tolist()}")
    ids = ids.astype(np.int64, copy=False)
    negative = ids[ids < 0]
    if negative.size:
        raise ValueError(f"{head}: got negative ids {negative[:5].tolist()}")
    ordered = np.sort(ids)
    duplicated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if duplicated.size:
        raise ValueError(f"{head}; duplicated: {duplicated[:5].tolist()} ({duplicated.size} in all)")
    return ids
