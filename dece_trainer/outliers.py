"""The flagging rule every suspicious-example report shares (the training monitor's and the data audit's): a row
is flagged when its score is an outlier of the report's own score distribution, never by a known poison rate.

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


def choose_threshold(scores: Sequence[float] | np.ndarray, fence: float = FENCE) -> float:
    """The flagging threshold for ``scores`` (NaN and None ignored), from their own distribution: the outlier rule
    of Iglewicz and Hoaglin, a modified z-score ``(score - median) / (1.4826 x MAD)`` above ``fence`` (2.5). Where
    more than half the scores are equal (MAD = 0) the mean absolute deviation stands in (x 1.2533). Returns
    ``inf`` (flag nothing) for fewer than 2 scores or no spread at all."""
    fence = check_number(fence, "fence", low=0.0, low_open=True)
    if isinstance(scores, np.ndarray):
        values = scores.astype(np.float64, copy=False).ravel()
    else:
        values = np.asarray([math.nan if s is None else s for s in scores], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size < 2:
        return math.inf
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread == 0:
        spread = 1.2533 * float(np.mean(np.abs(values - median)))
    return median + fence * spread if spread > 0 else math.inf
