"""Stable per-example ids that ride along the batch without reaching the model's forward."""

from __future__ import annotations

from typing import Any

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
