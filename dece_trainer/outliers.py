"""The flagging rule every suspicious-example report shares (the training monitor's and the data audit's): a row
is flagged when its score is an outlier of the report's own score distribution, never by a known poison rate; and
how several reports' scores of the same rows become one (`combine_scores`), in the same units (`robust_z`).

numpy only, so the data audit (``dece_trainer.audit``) and the filter (``callbacks.poison_filter``) use one rule.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .validation import check_number

# A row is flagged when its modified z-score (Iglewicz and Hoaglin 1993) exceeds FENCE. On the 33 DeCE reports of
# the GPU grid (docs/benchmark.md) their 3.5 left poisoned rows in 15 reports (236 of 594 poisoned rows); 2.5 left
# none in 30 (23 of 594 kept) and dropped 467 of 9126 clean rows (5%), which costs a retrain little.
FENCE = 2.5
# ContinueWithCE's guard of a switch before training: the data audit decides at step 0 only when its most suspicious
# row's `robust_z` reaches this, twice the fence (a round multiple of FENCE, set before the guard was measured). The
# development split accepts any value in (2.0, 8.2]: the audit's top z is 2.0 on Lyra BadPre 20% seed 0 (where it
# flags nothing) and 8.2 on fixed_deadcode 5% seed 0. Every other setting: benchmarks/audit_quality.py.
AUDIT_CONFIDENCE = 2 * FENCE


def choose_threshold(scores: Sequence[float] | np.ndarray, fence: float = FENCE) -> float:
    """The flagging threshold for ``scores`` (NaN and None ignored), from their own distribution: the outlier rule
    of Iglewicz and Hoaglin, a modified z-score ``(score - median) / (1.4826 x MAD)`` above ``fence`` (2.5). Where
    more than half the scores are equal (MAD = 0) the mean absolute deviation stands in (x 1.2533). Returns
    ``inf`` (flag nothing) for fewer than 2 scores or no spread at all."""
    fence = check_number(fence, "fence", low=0.0, low_open=True)
    center = _center_spread(_finite(scores))
    if center is None:
        return math.inf
    median, spread = center
    return median + fence * spread if spread > 0 else math.inf


def robust_z(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """(N,) float64: each score's modified z-score ``(score - median) / spread`` with the median and spread of
    `choose_threshold` (1.4826 x MAD, or 1.2533 x the mean absolute deviation where MAD = 0), NaN and None ignored
    in both and kept as NaN. All 0 where the scores have no spread (or fewer than 2 are known): a signal that tells
    the rows apart nowhere says nothing about any of them."""
    values = _as_float(scores)
    center = _center_spread(values[~np.isnan(values)])
    if center is None or center[1] <= 0:
        return np.where(np.isnan(values), np.nan, 0.0)
    median, spread = center
    return (values - median) / spread


def top_z(scores: Sequence[float] | np.ndarray) -> float:
    """The largest `robust_z` of ``scores`` (NaN and None ignored): how far the most suspicious row stands above the
    rest, in the fence's units, which ContinueWithCE's guard compares with `AUDIT_CONFIDENCE`. 0 for no scores, or
    scores without spread."""
    z = robust_z(scores)
    return float(np.nanmax(z)) if np.isfinite(z).any() else 0.0


def combine_scores(signals: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """One suspicion score from several scores of the same N rows (e.g. the training monitor's token score and the
    data audit's): each signal standardised by its own `robust_z`, and a row's score the sum of its positive
    z-scores, ``sum_s max(0, z_s)``. NaN where any signal is NaN.

    Each signal speaks in its own units of spread, so neither outweighs the other by its scale; below-median
    evidence counts as none, so a signal that is blind to an attack adds only its own noise above the median, and
    evidence that both signals see adds up. The report's threshold is then `choose_threshold` of the combined
    scores, as for one signal. Measured on 43 DeCE reports of the GPU grid against the data audit of the same
    training rows (``benchmarks/combined_report.py``, docs/early_learning.md)."""
    columns = [_as_float(s) for s in signals]
    if not columns:
        raise ValueError("combine_scores needs at least one signal")
    if any(c.shape != columns[0].shape for c in columns):
        raise ValueError(f"every signal must score the same rows: got shapes {[c.shape for c in columns]}")
    total = np.zeros(columns[0].shape)
    for column in columns:
        total += np.maximum(robust_z(column), 0.0)  # NaN stays NaN
    return total


def _as_float(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(scores, np.ndarray):
        return scores.astype(np.float64, copy=False).ravel()
    return np.asarray([math.nan if s is None else s for s in scores], dtype=np.float64)


def _finite(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    values = _as_float(scores)
    return values[~np.isnan(values)]


def _center_spread(values: np.ndarray) -> tuple[float, float] | None:
    """(median, spread) of ``values`` (no NaN) as the modified z-score uses them; None for fewer than 2 values."""
    if values.size < 2:
        return None
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread == 0:
        spread = 1.2533 * float(np.mean(np.abs(values - median)))
    return median, spread
