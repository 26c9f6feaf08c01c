"""From the suspicious-example report to a decision: which training rows to drop before a clean retrain.

The recipe (``dece+filter`` in ``dece-trainer bench``): train with DeCE and an `EarlyLearningCallback`, drop
the rows its report flags (:func:`drop_flagged`), fine-tune the starting model again with CE on the rows
kept. The threshold comes from the report's own score distribution (:func:`choose_threshold`), never from
a known poison rate.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..trainer.example_ids import EXAMPLE_ID_COLUMN
from ..validation import check_name, check_number

SCORE_KEY = "score"
# A row is flagged when its modified z-score (Iglewicz and Hoaglin 1993) exceeds FENCE. On the 33 DeCE reports of
# the GPU grid (docs/benchmark.md) their 3.5 left poisoned rows in 15 reports (236 of 594 poisoned rows); 2.5 left
# none in 30 (23 of 594 kept) and dropped 467 of 9126 clean rows (5%), which costs a retrain little.
FENCE = 2.5


@dataclass
class FilterDecision:
    """What the filter decided.

    Attributes:
        threshold: rows with ``score > threshold`` are flagged (``inf`` when nothing stands out).
        flagged: example ids to drop, most suspicious first.
        kept: example ids to keep, ascending.
        score_key: the report field the decision used.
        fence: the modified z-score above which a row was flagged.
    """

    threshold: float
    flagged: list[int]
    kept: list[int]
    score_key: str
    fence: float = FENCE

    def summary(self, poisoned: Sequence[bool] | None = None) -> dict[str, Any]:
        """JSON-ready counts; with ``poisoned`` (indexed by example id) also how many clean rows were dropped and
        how many poisoned rows were kept."""
        out: dict[str, Any] = {"threshold": self.threshold if math.isfinite(self.threshold) else None,
                               "flagged": len(self.flagged), "kept": len(self.kept), "score_key": self.score_key,
                               "fence": self.fence}
        if poisoned is not None:
            poisoned = np.asarray(poisoned, dtype=bool)
            out.update(dropped_clean=int((~poisoned[self.flagged]).sum()) if self.flagged else 0,
                       kept_poisoned=int(poisoned[self.kept].sum()) if self.kept else 0,
                       poisoned=int(poisoned.sum()))
        return out


def read_report(path: str | os.PathLike) -> list[dict]:
    """The records of a ``suspicious.jsonl`` written by `EarlyLearningCallback` (plain JSON, one per line)."""
    if not os.path.isfile(path):
        raise ValueError(f"no suspicious-example report at {path}: train with an EarlyLearningCallback first")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in records:
        if not isinstance(record, dict) or EXAMPLE_ID_COLUMN not in record:
            raise ValueError(f"{path} is not a suspicious-example report: a line has no `{EXAMPLE_ID_COLUMN}`")
    return records


def choose_threshold(scores: Sequence[float], fence: float = FENCE) -> float:
    """The flagging threshold for ``scores`` (NaN ignored), from their own distribution: the outlier rule of
    Iglewicz and Hoaglin, a modified z-score ``(score - median) / (1.4826 x MAD)`` above ``fence`` (2.5). Where
    more than half the scores are equal (MAD = 0) the mean absolute deviation stands in (x 1.2533). Returns
    ``inf`` (flag nothing) for fewer than 2 scores or no spread at all."""
    fence = check_number(fence, "fence", low=0.0, low_open=True)
    values = np.asarray([s for s in scores if s is not None and not math.isnan(s)], dtype=np.float64)
    if values.size < 2:
        return math.inf
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    if spread == 0:
        spread = 1.2533 * float(np.mean(np.abs(values - median)))
    return median + fence * spread if spread > 0 else math.inf


def decide(report: list[dict] | str | os.PathLike, score_key: str = SCORE_KEY,
           fence: float = FENCE) -> FilterDecision:
    """Flag the rows of ``report`` (records or a ``suspicious.jsonl`` path) whose ``score_key`` exceeds
    :func:`choose_threshold` of all rows' scores at ``fence`` (> 0; lower flags more rows). Rows without a score
    are kept."""
    check_name(score_key, "score_key")
    records = read_report(report) if isinstance(report, (str, os.PathLike)) else report
    scored = [(int(r[EXAMPLE_ID_COLUMN]), r.get(score_key)) for r in records]
    missing = [i for i, s in scored if s is not None and not isinstance(s, (int, float))]
    if missing:
        raise ValueError(f"report field {score_key!r} is not a number for example ids {missing[:5]}")
    threshold = choose_threshold([s for _, s in scored if s is not None], fence)
    flagged = [i for i, s in sorted(scored, key=lambda kv: -(kv[1] if kv[1] is not None else -math.inf))
               if s is not None and s > threshold]
    dropped = set(flagged)
    return FilterDecision(threshold, flagged, sorted(i for i, _ in scored if i not in dropped), score_key, fence)


def drop_flagged(dataset: Any, report: list[dict] | str | os.PathLike, score_key: str = SCORE_KEY,
                 id_column: str = EXAMPLE_ID_COLUMN, fence: float = FENCE) -> tuple[Any, FilterDecision]:
    """``dataset`` (a ``datasets.Dataset`` whose ``id_column``, or else row index, is the report's example id)
    without the flagged rows, and the decision. Rows the report does not mention are kept."""
    decision = decide(report, score_key, fence)
    ids = dataset[id_column] if id_column in dataset.column_names else range(len(dataset))
    dropped = set(decision.flagged)
    return dataset.select([row for row, i in enumerate(ids) if int(i) not in dropped]), decision
