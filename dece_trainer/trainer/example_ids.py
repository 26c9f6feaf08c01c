"""Stable per-example ids that ride along the batch without reaching the model's forward."""

from __future__ import annotations

from typing import Any

EXAMPLE_ID_COLUMN = "example_id"


def add_example_ids(dataset: Any, column: str = EXAMPLE_ID_COLUMN) -> Any:
    """Add an int column ``column`` = row index to a ``datasets.Dataset`` (0 .. len - 1).

    Keep it through ``remove_unused_columns``: DeCE trainers do so themselves; for a plain ``Trainer``
    call :func:`keep_example_ids` (``EarlyLearningCallback.attach`` does). Collators must pass it
    through (``DataCollatorWithPadding`` and ``DataCollatorForSeq2Seq`` do: it becomes a (batch,) tensor).
    """
    if column in dataset.column_names:
        raise ValueError(f"the dataset already has a column named {column!r}")
    return dataset.add_column(column, list(range(len(dataset))))


def keep_example_ids(trainer: Any) -> None:
    """Make ``trainer`` keep the example-id column when it removes columns the model does not take."""
    if not hasattr(trainer, "_set_signature_columns_if_needed"):
        raise ValueError("this Trainer version cannot keep the example-id column: set remove_unused_columns=False")
    trainer._set_signature_columns_if_needed()
    if EXAMPLE_ID_COLUMN not in trainer._signature_columns:
        trainer._signature_columns.append(EXAMPLE_ID_COLUMN)


def pop_example_ids(inputs: dict[str, Any]) -> Any:
    """Remove and return the example ids of a batch (None when it has none)."""
    return inputs.pop(EXAMPLE_ID_COLUMN, None)
