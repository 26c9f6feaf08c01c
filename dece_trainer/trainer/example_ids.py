"""Stable per-example ids that ride along the batch without reaching the model's forward."""

from __future__ import annotations

from typing import Any, Callable

import torch

EXAMPLE_ID_COLUMN = "example_id"


def add_example_ids(dataset: Any) -> Any:
    """Add an int column ``example_id`` = row index to a ``datasets.Dataset`` (0 .. len - 1).

    DeCE trainers keep it through ``remove_unused_columns`` themselves, and so does
    ``EarlyLearningCallback.attach`` for a plain ``Trainer``. Collators must pass it through
    (``DataCollatorWithPadding`` and ``DataCollatorForSeq2Seq`` do: it becomes a (batch,) tensor).
    """
    if EXAMPLE_ID_COLUMN in dataset.column_names:
        raise ValueError(f"the dataset already has a column named {EXAMPLE_ID_COLUMN!r}")
    return dataset.add_column(EXAMPLE_ID_COLUMN, list(range(len(dataset))))


def pop_example_ids(inputs: dict[str, Any]) -> Any:
    """Remove and return the example ids of a batch (None when it has none)."""
    return inputs.pop(EXAMPLE_ID_COLUMN, None)


class ExampleIdCollator:
    """Wraps a data collator that drops unknown columns (TRL's) so that ``example_id`` rides along as a (batch,)
    tensor. Rows without the column pass through unchanged."""

    def __init__(self, collator: Callable[[list[dict]], dict]):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        if not features or EXAMPLE_ID_COLUMN not in features[0]:
            return self.collator(features)
        ids = [f[EXAMPLE_ID_COLUMN] for f in features]
        if not all(isinstance(i, int) for i in ids):
            raise ValueError(f"each row must carry one integer `{EXAMPLE_ID_COLUMN}`; got {ids[0]!r} (packing puts "
                             "several examples in a row: per-example statistics need packing=False)")
        batch = self.collator([{k: v for k, v in f.items() if k != EXAMPLE_ID_COLUMN} for f in features])
        batch[EXAMPLE_ID_COLUMN] = torch.tensor(ids)
        return batch
