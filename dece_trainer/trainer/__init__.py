"""Trainer integration: DeCE in Hugging Face ``Trainer``/``Seq2SeqTrainer`` and their arguments."""

from .dece_config import DeCESeq2SeqTrainingArguments, DeCESettings, DeCETrainingArguments
from .dece_trainer import DeCEMixin, DeCESeq2SeqTrainer, DeCETrainer
from .loss_func import DeCELossFunc, make_dece_loss_func

__all__ = [
    "DeCELossFunc",
    "DeCEMixin",
    "DeCESeq2SeqTrainer",
    "DeCESeq2SeqTrainingArguments",
    "DeCESettings",
    "DeCETrainer",
    "DeCETrainingArguments",
    "make_dece_loss_func",
]
