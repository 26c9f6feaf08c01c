"""Trainer callbacks: the early-learning monitor, its per-example and per-token statistics, the filter that acts on
its report, and ContinueWithCE, which acts on it within the run."""

from .continue_ce import ContinueWithCE
from .early_learning import EarlyLearningCallback
from .example_history import EpochSummary, ExampleHistory, auroc, precision_at_k
from .poison_filter import FilterDecision, drop_flagged
from .worst_tokens import WorstTokens, recurrence_scores

__all__ = ["ContinueWithCE", "EarlyLearningCallback", "EpochSummary", "ExampleHistory", "FilterDecision",
           "WorstTokens", "auroc", "drop_flagged", "precision_at_k", "recurrence_scores"]
