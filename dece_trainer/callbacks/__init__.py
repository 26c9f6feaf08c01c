"""Trainer callbacks: the early-learning monitor and its per-example statistics."""

from .early_learning import EarlyLearningCallback
from .example_history import EpochSummary, ExampleHistory, auroc, precision_at_k

__all__ = ["EarlyLearningCallback", "EpochSummary", "ExampleHistory", "auroc", "precision_at_k"]
