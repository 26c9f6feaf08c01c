"""One home for argument checks: every entry point (functional loss, module, schedule, settings, callback,
CLI) validates through these, so the same bad value gets the same message everywhere.

Pure Python (``numbers``, ``math``): no torch, no transformers. Numbers are accepted as any
``numbers.Real`` (Python and numpy scalars) but never ``bool``; NaN and infinities are refused unless a
check says otherwise. Each check returns the value converted to a plain Python ``float``/``int``/``str``,
and raises ``ValueError`` naming the argument, the allowed values and what it got.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

REDUCTIONS = ("mean", "sum", "none")
SCHEDULES = ("epoch", "continuous")


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
