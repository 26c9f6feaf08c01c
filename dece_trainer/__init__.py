"""dece-trainer: defend code-model fine-tuning against backdoors with Deceptive Cross-Entropy.

Layers: ``dece_trainer.ops`` (pure math) -> ``dece_trainer.trainer`` (Hugging Face integration)
-> ``dece_trainer.callbacks`` (the early-learning monitor).
"""

from .callbacks import EarlyLearningCallback
from .modules import DeCELoss
from .ops import (
    DeCELossOutput,
    alpha_base_for_final,
    dece_alpha,
    dece_loss_and_token_ce,
    deceptive_cross_entropy,
    grad_bound,
    schedule_exponent,
    suppression_threshold,
)
from .trainer import (
    DeCELossFunc,
    DeCEMixin,
    DeCESeq2SeqTrainer,
    DeCESeq2SeqTrainingArguments,
    DeCESettings,
    DeCETrainer,
    DeCETrainingArguments,
    make_dece_loss_func,
)
from .trainer.example_ids import EXAMPLE_ID_COLUMN, add_example_ids

__version__ = "0.1.0"

__all__ = [
    "EXAMPLE_ID_COLUMN",
    "EarlyLearningCallback",
    "add_example_ids",
    "DeCELoss",
    "DeCELossFunc",
    "DeCELossOutput",
    "DeCEMixin",
    "DeCESeq2SeqTrainer",
    "DeCESeq2SeqTrainingArguments",
    "DeCESettings",
    "DeCETrainer",
    "DeCETrainingArguments",
    "alpha_base_for_final",
    "dece_alpha",
    "dece_loss_and_token_ce",
    "deceptive_cross_entropy",
    "grad_bound",
    "make_dece_loss_func",
    "schedule_exponent",
    "suppression_threshold",
]
