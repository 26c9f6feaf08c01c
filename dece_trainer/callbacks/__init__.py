"""Trainer callbacks: the early-learning monitor, its per-example and per-token statistics, and the filter that
acts on its report."""

from .early_learning import EarlyLearningCallback
from .example_history import EpochSummary, ExampleHistory, auroc, precision_at_k
from .poison_filter import FilterDecision, drop_flagged
from .worst_tokens import WorstTokens, recurrence_scores

__all__ = ["EarlyLearningCallback", "EpochSummary", "ExampleHistory", "FilterDecision", "WorstTokens", "auroc",
           "drop_flagged", "precision_at_k", "recurrence_scores"]
